// WebDataset shards: brace patterns, grouping tar members into samples, shuffling.
#include "data/webdataset.h"

#include <algorithm>
#include <cctype>

#include "tensor/error.h"

namespace bcos::data {

std::vector<std::string> expand_braces(const std::string& pattern) {
  const size_t open = pattern.find('{');
  if (open == std::string::npos) return {pattern};
  const size_t close = pattern.find('}', open);
  BCOS_CHECK(close != std::string::npos, "WebDataset: unmatched '{' in ", pattern);
  const std::string inside = pattern.substr(open + 1, close - open - 1);
  const std::string head = pattern.substr(0, open);
  std::vector<std::string> middles;
  const size_t dots = inside.find("..");
  if (dots != std::string::npos) {  // numeric range, inclusive, zero-padded as its first bound
    const std::string lo_text = inside.substr(0, dots), hi_text = inside.substr(dots + 2);
    auto is_number = [](const std::string& t) {
      return !t.empty() && std::all_of(t.begin(), t.end(), [](unsigned char c) { return std::isdigit(c); });
    };
    BCOS_CHECK(is_number(lo_text) && is_number(hi_text) && lo_text.size() < 19 && hi_text.size() < 19,
               "WebDataset: bad range {", inside, "} in ", pattern);
    const int64_t lo = std::stoll(lo_text), hi = std::stoll(hi_text);
    BCOS_CHECK(lo <= hi && hi - lo < 10000000, "WebDataset: bad range {", inside, "} in ", pattern);
    for (int64_t i = lo; i <= hi; ++i) {
      std::string digits = std::to_string(i);
      if (digits.size() < lo_text.size()) digits.insert(0, lo_text.size() - digits.size(), '0');
      middles.push_back(digits);
    }
  } else {  // alternatives: {a,b,c}
    size_t start = 0;
    for (;;) {
      const size_t comma = inside.find(',', start);
      middles.push_back(inside.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  // In the order the pattern names them: the first group varies slowest.
  std::vector<std::string> ordered;
  const auto tails = expand_braces(pattern.substr(close + 1));
  for (const std::string& m : middles)
    for (const std::string& tail : tails) ordered.push_back(head + m + tail);
  return ordered;
}

WebDataset::WebDataset(std::vector<std::string> shards, WebDatasetOptions options) : options_(options) {
  for (const std::string& s : shards)
    for (std::string& name : expand_braces(s)) shards_.push_back(std::move(name));
  BCOS_CHECK(!shards_.empty(), "WebDataset: no shards given");
}

namespace {

// "dir/airplane_0001.jpg" -> key "dir/airplane_0001", extension "jpg" (lower-cased). False
// for a name without a dot in its last component.
bool split_member_name(const std::string& name, std::string* key, std::string* ext) {
  const size_t slash = name.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = name.find('.', base);
  if (dot == std::string::npos || dot == base) return false;
  *key = name.substr(0, dot);
  *ext = name.substr(dot + 1);
  std::transform(ext->begin(), ext->end(), ext->begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return true;
}

}  // namespace

std::vector<int64_t> WebDataset::shard_counts() const {
  std::lock_guard<std::mutex> lock(count_mutex_);
  if (!shard_counts_.empty() || shards_.empty()) return shard_counts_;
  std::vector<int64_t> counts;
  for (const std::string& shard : shards_) {
    TarReader tar(shard);
    TarMember m;
    std::string last, key, ext;
    int64_t n = 0;
    while (tar.next(m)) {
      if (!m.is_file() || !split_member_name(m.name, &key, &ext)) continue;
      if (key != last) ++n, last = key;
    }
    counts.push_back(n);
  }
  shard_counts_ = counts;
  return counts;
}

int64_t WebDataset::count() const {
  int64_t n = 0;
  for (int64_t c : shard_counts()) n += c;
  return n;
}

WebDataset::Stream WebDataset::stream(bool shuffle, uint64_t seed, int64_t buffer, int part, int parts) const {
  BCOS_CHECK(!shuffle || buffer >= 1, "WebDataset: shuffle buffer of ", buffer, " samples");
  BCOS_CHECK(parts >= 1 && part >= 0 && part < parts, "WebDataset: part ", part, " of ", parts);
  BCOS_CHECK(parts == 1 || int64_t(shards_.size()) >= parts, "WebDataset: ", shards_.size(),
             " shard(s) cannot be split over ", parts, " parts");
  Stream s;
  s.order_ = shards_;
  s.options_ = options_;
  s.shuffle_ = shuffle;
  s.buffer_size_ = size_t(std::max<int64_t>(buffer, 1));
  s.rng_ = Rng(seed, 0x5A4D, 0);
  if (shuffle)
    for (size_t i = s.order_.size(); i > 1; --i)
      std::swap(s.order_[i - 1], s.order_[size_t(s.rng_.randint(0, int64_t(i)))]);
  if (parts > 1) {  // every parts-th shard of the agreed order
    std::vector<std::string> mine;
    for (size_t i = size_t(part); i < s.order_.size(); i += size_t(parts)) mine.push_back(s.order_[i]);
    s.order_ = std::move(mine);
  }
  return s;
}

bool WebDataset::Stream::read_one(Record& r, std::string* missing) {
  TarMember m;
  std::string key, ext;
  // The first member of the next sample.
  for (;;) {
    if (!tar_) {
      if (shard_ >= order_.size()) return false;
      tar_ = std::make_unique<TarReader>(order_[shard_++]);
      has_lookahead_ = false;
    }
    if (has_lookahead_) {
      m = lookahead_;
      has_lookahead_ = false;
    } else if (!tar_->next(m)) {
      tar_.reset();
      continue;
    }
    if (m.is_file() && split_member_name(m.name, &key, &ext)) break;
  }
  r = Record{};
  r.name = tar_->path() + ": " + key;
  std::string problems;
  bool has_label = false;
  std::vector<std::string> seen;  // extensions, to catch a field given twice
  for (;;) {
    const bool image = ext == "jpg" || ext == "jpeg" || ext == "png" || ext == "bmp";
    const std::string field = image ? "image" : ext;
    if (std::find(seen.begin(), seen.end(), field) != seen.end())
      problems += "a second " + field + " (" + m.name + "); ";
    seen.push_back(field);
    if (image) {
      r.image_bytes = tar_->read_data();
    } else if (ext == "cls") {
      const std::string text = tar_->read_data();
      size_t used = 0;
      try {
        r.label = std::stoll(text, &used);
        has_label = true;
        for (size_t i = used; i < text.size(); ++i)
          if (!std::isspace(static_cast<unsigned char>(text[i]))) has_label = false;
      } catch (const std::exception&) {
        has_label = false;
      }
      if (!has_label) problems += "bad label in " + m.name + " ('" + text.substr(0, 20) + "'); ";
    } else if (ext == "txt") {
      r.text = tar_->read_data();
    } else if (ext == "json") {
      r.json = tar_->read_data();
    }
    // Next member: the same key continues the sample; another key starts the next one.
    std::string next_key, next_ext;
    bool shard_ended = false;
    for (;;) {
      if (!tar_->next(m)) {
        shard_ended = true;
        break;
      }
      if (m.is_file() && split_member_name(m.name, &next_key, &next_ext)) break;
    }
    if (shard_ended) {
      tar_.reset();
      break;
    }
    if (next_key != key) {
      lookahead_ = m;
      has_lookahead_ = true;
      break;
    }
    ext = next_ext;
  }
  if (options_.require_image && r.image_bytes.empty()) problems += "no image (.jpg/.jpeg/.png/.bmp); ";
  if (options_.require_label && !has_label && problems.find("bad label") == std::string::npos)
    problems += "no label (.cls); ";
  if (!has_label) r.label = -1;
  if (!problems.empty()) problems.resize(problems.size() - 2);
  *missing = problems;
  return true;
}

bool WebDataset::Stream::next(Record& r, std::string* missing) {
  if (!shuffle_) return read_one(r, missing);
  while (!source_done_ && buffer_.size() < buffer_size_) {
    std::pair<Record, std::string> item;
    if (!read_one(item.first, &item.second)) {
      source_done_ = true;
      break;
    }
    buffer_.push_back(std::move(item));
  }
  if (buffer_.empty()) return false;
  const size_t k = size_t(rng_.randint(0, int64_t(buffer_.size())));
  std::swap(buffer_[k], buffer_.back());
  r = std::move(buffer_.back().first);
  *missing = std::move(buffer_.back().second);
  buffer_.pop_back();
  return true;
}

}  // namespace bcos::data
