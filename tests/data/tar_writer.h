// Builds small ustar archives for the tests (the reader under test is data/tar.h).
#pragma once

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace testdata {

inline std::string tar_header(const std::string& name, size_t size, char type = '0') {
  std::string h(512, '\0');
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 100));
  std::snprintf(h.data() + 100, 8, "%07o", 0644);
  std::snprintf(h.data() + 108, 8, "%07o", 0);
  std::snprintf(h.data() + 116, 8, "%07o", 0);
  std::snprintf(h.data() + 124, 12, "%011zo", size);
  std::snprintf(h.data() + 136, 12, "%011o", 0);
  h[156] = type;
  std::memcpy(h.data() + 257, "ustar", 6);
  std::memcpy(h.data() + 263, "00", 2);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  std::snprintf(h.data() + 148, 8, "%06o", sum);
  h[155] = ' ';
  return h;
}

// One member: header, data, zero padding to the block boundary.
inline std::string tar_member(const std::string& name, const std::string& data, char type = '0') {
  std::string out = tar_header(name, data.size(), type);
  out += data;
  out.append((512 - data.size() % 512) % 512, '\0');
  return out;
}

// A pax record "<length> <key>=<value>\n", the length counting itself.
inline std::string pax_record(const std::string& key, const std::string& value) {
  const size_t body = key.size() + value.size() + 3;  // ' ', '=', '\n'
  size_t len = body + 1;
  while (std::to_string(len).size() + body != len) ++len;
  return std::to_string(len) + " " + key + "=" + value + "\n";
}

inline std::string tar_end() { return std::string(1024, '\0'); }

// members: (name, data); a name ending in '/' is a directory entry.
inline std::string make_tar(const std::vector<std::pair<std::string, std::string>>& members) {
  std::string out;
  for (const auto& [name, data] : members) {
    const bool dir = !name.empty() && name.back() == '/';
    out += tar_header(name, dir ? 0 : data.size(), dir ? '5' : '0');
    if (dir) continue;
    out += data;
    out.append((512 - data.size() % 512) % 512, '\0');
  }
  out.append(1024, '\0');
  return out;
}

}  // namespace testdata
