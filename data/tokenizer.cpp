// CLIP's byte-level BPE tokenizer (data/tokenizer.h). Each step mirrors one line of OpenAI's
// simple_tokenizer.py and the Python it leans on (html.unescape, str.strip, str.lower, the
// `regex` pattern); tests/golden/tokenizer.safetensors holds a reference's answers.
#include "data/tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <utf8proc.h>
#include <zlib.h>

#include "tensor/error.h"

namespace bcos::data {

namespace {

#include "data/tokenizer_tables.inc"

// ---- UTF-8 ------------------------------------------------------------------------------------

struct Utf8Step {
  char32_t cp;    // U+FFFD when invalid
  size_t length;  // bytes consumed: the sequence, or the maximal invalid subpart
  bool valid;
};

// The next code point at s[i], with the well-formed ranges of Unicode's table 3-7, so overlong
// forms, surrogates and values past U+10FFFF are invalid, as Python's decoder has them.
Utf8Step next_utf8(std::string_view s, size_t i) {
  const auto b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return {b, 1, true};
  size_t need;
  char32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // the second byte's range
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1, cp = b & 0x1F;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2, cp = b & 0x0F;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3, cp = b & 0x07;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return {0xFFFD, 1, false};
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return {0xFFFD, k, false};
    const auto c = static_cast<uint8_t>(s[i + k]);
    if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return {0xFFFD, k, false};
    cp = (cp << 6) | (c & 0x3F);
  }
  return {cp, need + 1, true};
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

// ---- Unicode properties -------------------------------------------------------------------

template <size_t N>
bool in_ranges(const uint32_t (&ranges)[N][2], char32_t c) {
  const auto* it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                                    [](char32_t v, const uint32_t(&r)[2]) { return v < r[0]; });
  return it != std::begin(ranges) && c <= (*(it - 1))[1];
}

template <size_t N>
bool in_list(const uint32_t (&list)[N], char32_t c) {
  return std::find(std::begin(list), std::end(list), c) != std::end(list);
}

bool regex_space(char32_t c) { return in_list(kRegexSpace, c); }    // regex's \s
bool python_space(char32_t c) { return in_list(kPythonSpace, c); }  // str.isspace()

// Python's str.lower(): full lower-case mapping (U+0130 becomes two code points), and a capital
// sigma becomes final (U+03C2) after a cased letter and not before one, case-ignorables skipped.
std::u32string python_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == 0x130) {
      out += U"i\u0307";
    } else if (c == 0x3A3) {
      size_t j = i;
      while (j > 0 && in_ranges(kCaseIgnorableRanges, s[j - 1])) --j;
      bool final_sigma = j > 0 && in_ranges(kCasedRanges, s[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < s.size() && in_ranges(kCaseIgnorableRanges, s[k])) ++k;
        final_sigma = k == s.size() || !in_ranges(kCasedRanges, s[k]);
      }
      out += final_sigma ? char32_t(0x3C2) : char32_t(0x3C3);
    } else {
      out += char32_t(utf8proc_tolower(utf8proc_int32_t(c)));
    }
  }
  return out;
}

// The pattern's classes. With IGNORECASE, U+0345 (which case-folds to a letter but is a mark)
// matches none of them, so, like a space, it only separates pieces.
enum class CharClass { space, letter, number, other };

CharClass classify(char32_t c) {
  if (regex_space(c) || c == 0x345) return CharClass::space;
  switch (utf8proc_category(utf8proc_int32_t(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
      return CharClass::letter;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return CharClass::number;
    default:
      return CharClass::other;
  }
}

// Does the lower-cased text match the pattern's literal `lit` at i, case-insensitively? After
// lower(), the only non-ASCII code point that folds to an ASCII letter is U+017F (long s).
size_t match_literal(const std::u32string& s, size_t i, std::u32string_view lit) {
  if (i + lit.size() > s.size()) return 0;
  for (size_t k = 0; k < lit.size(); ++k)
    if (s[i + k] != lit[k] && !(lit[k] == U's' && s[i + k] == 0x17F)) return 0;
  return lit.size();
}

// ---- html.unescape ------------------------------------------------------------------------

const NamedEntity* find_entity(std::string_view name) {
  const auto* it = std::lower_bound(std::begin(kHtml5Entities), std::end(kHtml5Entities), name,
                                    [](const NamedEntity& e, std::string_view n) { return std::string_view(e.name) < n; });
  return it != std::end(kHtml5Entities) && name == it->name ? it : nullptr;
}

std::u32string utf8_to_u32(const char* s) { return decode_utf8(s, "html5 entity table"); }

// A numeric reference's replacement, as html._replace_charref.
std::u32string numeric_reference(uint64_t num) {
  for (const auto& [from, to] : kInvalidCharrefs)
    if (num == from) return std::u32string(1, char32_t(to));
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
  if (in_list(kInvalidCodepoints, char32_t(num))) return U"";
  return std::u32string(1, char32_t(num));
}

bool ascii_digit(char32_t c) { return c >= U'0' && c <= U'9'; }
bool ascii_hex(char32_t c) { return ascii_digit(c) || (c >= U'a' && c <= U'f') || (c >= U'A' && c <= U'F'); }

// One pass of html.unescape: each match of &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
// replaced, left to right, the scan going on after the match.
std::u32string unescape_once(const std::u32string& s) {
  if (s.find(U'&') == std::u32string::npos) return s;
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != U'&') {
      out += s[i++];
      continue;
    }
    const size_t j = i + 1;
    if (j < s.size() && s[j] == U'#') {
      const bool hex = j + 1 < s.size() && (s[j + 1] == U'x' || s[j + 1] == U'X');
      size_t k = hex ? j + 2 : j + 1;
      const size_t digits_start = k;
      uint64_t num = 0;
      while (k < s.size() && (hex ? ascii_hex(s[k]) : ascii_digit(s[k]))) {
        const char32_t c = s[k];
        const uint64_t d = ascii_digit(c) ? c - U'0' : (c | 0x20) - U'a' + 10;
        num = std::min<uint64_t>(num * (hex ? 16 : 10) + d, 0x7FFFFFFF);  // anything past U+10FFFF is alike
        ++k;
      }
      if (k == digits_start) {  // "&#" without digits matches nothing
        out += s[i++];
        continue;
      }
      if (k < s.size() && s[k] == U';') ++k;
      out += numeric_reference(num);
      i = k;
      continue;
    }
    size_t k = j;
    auto name_char = [](char32_t c) {
      return c != U'\t' && c != U'\n' && c != U'\f' && c != U' ' && c != U'<' && c != U'&' && c != U'#' && c != U';';
    };
    while (k < s.size() && k - j < 32 && name_char(s[k])) ++k;
    if (k == j) {
      out += s[i++];
      continue;
    }
    if (k < s.size() && s[k] == U';') ++k;
    const std::u32string name = s.substr(j, k - j);
    if (const NamedEntity* e = find_entity(encode_utf8(name))) {
      out += utf8_to_u32(e->value);
    } else {
      bool found = false;
      for (size_t x = name.size() - 1; x > 1 && !found; --x)  // the longest known prefix, at least 2 long
        if (const NamedEntity* p = find_entity(encode_utf8(name.substr(0, x)))) {
          out += utf8_to_u32(p->value);
          out += name.substr(x);
          found = true;
        }
      if (!found) {
        out += U'&';
        out += name;
      }
    }
    i = k;
  }
  return out;
}

// ---- ftfy.fix_text --------------------------------------------------------------------------
// OpenAI's basic_clean runs ftfy.fix_text before anything else. This is ftfy 6's fix_text with its
// default settings, except its mojibake repair (fix_encoding and the steps inside it), which is a
// statistical heuristic: text that looks like mojibake tokenizes as given. Per line (each segment
// ends after a '\n'), the fixes below run in ftfy's order until the segment stops changing.

// ftfy's unescape_html: each &#?[0-9A-Za-z]{1,24}; that is an html5 name (or an upper-case form
// ftfy also accepts), or a numeric reference html.unescape decodes whole, becomes its character.
std::u32string ftfy_unescape(const std::u32string& s) {
  auto alnum = [](char32_t c) { return (c >= U'0' && c <= U'9') || ((c | 0x20) >= U'a' && (c | 0x20) <= U'z'); };
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != U'&') {
      out += s[i++];
      continue;
    }
    const size_t body = i + 1 + (i + 1 < s.size() && s[i + 1] == U'#');
    size_t end = body;
    while (end < s.size() && alnum(s[end])) ++end;
    if (end == body || end - body > 24 || end == s.size() || s[end] != U';') {
      out += s[i++];
      continue;
    }
    const std::string name = encode_utf8(s.substr(i + 1, end + 1 - (i + 1)));  // with '#' or not, with ';'
    const NamedEntity* e = body == i + 1 ? find_entity(name) : nullptr;
    if (!e && body == i + 1) {
      const auto* it = std::lower_bound(std::begin(kFtfyUpperEntities), std::end(kFtfyUpperEntities), name,
                                        [](const NamedEntity& x, const std::string& n) { return x.name < n; });
      if (it != std::end(kFtfyUpperEntities) && name == it->name) e = &*it;
    }
    if (e) {
      out += utf8_to_u32(e->value);
    } else if (body == i + 2) {
      // html.unescape decodes "&#" + digits (or x / X + hex digits); anything else leaves a ';'
      // behind, and then ftfy keeps the reference as it was.
      const bool hex = s[body] == U'x' || s[body] == U'X';
      bool whole = end > body + hex;
      uint64_t num = 0;
      for (size_t k = body + hex; k < end && whole; ++k) {
        const char32_t c = s[k];
        whole = hex ? ascii_hex(c) : ascii_digit(c);
        const uint64_t d = ascii_digit(c) ? c - U'0' : (c | 0x20) - U'a' + 10;
        num = std::min<uint64_t>(num * (hex ? 16 : 10) + d, 0x7FFFFFFF);
      }
      const std::u32string decoded = whole ? numeric_reference(num) : U";";
      out += decoded.find(U';') == std::u32string::npos ? decoded : s.substr(i, end + 1 - i);  // "&#59;" stays
    } else {
      out += s.substr(i, end + 1 - i);
    }
    i = end + 1;
  }
  return out;
}

const char* code_point_text(const CodePointText* begin, const CodePointText* end, char32_t c) {
  const auto* it = std::lower_bound(begin, end, c, [](const CodePointText& x, char32_t v) { return x.cp < v; });
  return it != end && it->cp == c ? it->value : nullptr;
}

// fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes: one code point at a time.
std::u32string ftfy_map_characters(const std::u32string& s) {
  std::u32string c1, out;
  for (char32_t c : s) c1 += c >= 0x80 && c <= 0x9F ? char32_t(kSloppyWindows1252[c - 0x80]) : c;
  for (char32_t c : c1) {
    if (const char* v = code_point_text(std::begin(kFtfyLigatures), std::end(kFtfyLigatures), c)) out += utf8_to_u32(v);
    else out += c;
  }
  std::u32string wide;
  for (char32_t c : out) {
    if (const char* v = code_point_text(std::begin(kFtfyWidthMap), std::end(kFtfyWidthMap), c)) wide += utf8_to_u32(v);
    else wide += c;
  }
  for (char32_t& c : wide) {
    if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) c = U'\'';
    else if (c >= 0x201C && c <= 0x201F) c = U'"';
  }
  return wide;
}

// fix_line_breaks: \r\n, \r, U+2028, U+2029 and U+0085 become \n.
std::u32string ftfy_line_breaks(const std::u32string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == U'\r' && i + 1 < s.size() && s[i + 1] == U'\n') continue;  // the \n follows
    out += c == U'\r' || c == 0x2028 || c == 0x2029 || c == 0x85 ? U'\n' : c;
  }
  return out;
}

// remove_terminal_escapes (ESC [ then digits or ';' (\d: any decimal digit), then a letter A-Z /
// a-z) and remove_control_chars (C0 controls but \t \n \f \r, DEL, U+206A-U+206F, U+FEFF,
// U+FFF9-U+FFFC), in that order.
std::u32string ftfy_remove_controls(const std::u32string& s) {
  std::u32string kept;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 0x1B && i + 1 < s.size() && s[i + 1] == U'[') {
      size_t k = i + 2;
      while (k < s.size() && (s[k] == U';' || utf8proc_category(utf8proc_int32_t(s[k])) == UTF8PROC_CATEGORY_ND)) ++k;
      if (k < s.size() && (s[k] | 0x20) >= U'a' && (s[k] | 0x20) <= U'z') {
        i = k;
        continue;
      }
    }
    kept += s[i];
  }
  std::u32string out;
  for (char32_t c : kept) {
    const bool control = (c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
                         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
    if (!control) out += c;
  }
  return out;
}

// Unicode NFC (utf8proc). The text is valid by now: every code point came from valid UTF-8 or
// from the tables.
std::u32string nfc(const std::u32string& s) {
  const std::string bytes = encode_utf8(s);
  utf8proc_uint8_t* composed = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(bytes.data()),
                                          utf8proc_ssize_t(bytes.size()), &composed,
                                          utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  BCOS_CHECK(n >= 0, "ftfy_fix_text: NFC normalisation failed: ", utf8proc_errmsg(n));
  const std::u32string out = decode_utf8(std::string_view(reinterpret_cast<const char*>(composed), size_t(n)), "NFC");
  std::free(composed);
  return out;
}

std::u32string ftfy_fix(const std::u32string& text) {
  // Printable ASCII, tabs and newlines without '&': no fix changes it (the common prompt).
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return (c >= 0x20 && c < 0x7F && c != U'&') || c == U'\t' || c == U'\n'; }))
    return text;
  constexpr size_t kMaxSegment = 1000000;  // ftfy's max_decode_length
  std::u32string out;
  bool unescape = true;  // "auto": off from the first segment holding a '<' on
  for (size_t pos = 0; pos < text.size();) {
    size_t brk = text.find(U'\n', pos);
    brk = brk == std::u32string::npos ? text.size() : brk + 1;
    brk = std::min(brk, pos + kMaxSegment);
    std::u32string segment = text.substr(pos, brk - pos);
    if (segment.find(U'<') != std::u32string::npos) unescape = false;
    for (;;) {
      const std::u32string before = segment;
      if (unescape) segment = ftfy_unescape(segment);
      segment = nfc(ftfy_remove_controls(ftfy_line_breaks(ftfy_map_characters(segment))));
      if (segment == before) break;
    }
    out += segment;
    pos = brk;
  }
  return out;
}

std::u32string strip_python(const std::u32string& s) {
  size_t a = 0, b = s.size();
  while (a < b && python_space(s[a])) ++a;
  while (b > a && python_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::u32string clean(std::u32string s) {
  s = strip_python(unescape_once(unescape_once(ftfy_fix(s))));
  std::u32string collapsed;
  for (size_t i = 0; i < s.size();) {
    if (regex_space(s[i])) {
      collapsed += U' ';
      while (i < s.size() && regex_space(s[i])) ++i;
    } else {
      collapsed += s[i++];
    }
  }
  return python_lower(strip_python(collapsed));
}

// The pieces of OpenAI's pattern, as code-point ranges of the clean text.
std::vector<std::u32string> pieces_of(const std::u32string& s) {
  static constexpr std::u32string_view kSpecial[] = {U"<|startoftext|>", U"<|endoftext|>"};
  static constexpr std::u32string_view kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  std::vector<std::u32string> pieces;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = 0;
    for (auto lit : kSpecial)
      if (!n) n = match_literal(s, i, lit);
    for (auto lit : kContractions)
      if (!n) n = match_literal(s, i, lit);
    if (!n) {
      const CharClass c = classify(s[i]);
      if (c == CharClass::space) {
        ++i;
        continue;
      }
      n = 1;
      if (c != CharClass::number)  // letters and others run on; digits go one at a time
        while (i + n < s.size() && classify(s[i + n]) == c) ++n;
    }
    pieces.push_back(s.substr(i, n));
    i += n;
  }
  return pieces;
}

std::string read_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  BCOS_CHECK(f, "ClipTokenizer: cannot open ", path);
  std::string data;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) data.append(buf, size_t(n));
  int err = Z_OK;
  const std::string message = n < 0 ? gzerror(f, &err) : "";
  gzclose(f);
  BCOS_CHECK(n == 0, "ClipTokenizer: ", path, " is not a readable gzip file (", message, ")");
  return data;
}

}  // namespace

// ---- public helpers -------------------------------------------------------------------------

std::u32string decode_utf8(std::string_view bytes, std::string_view what) {
  std::u32string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const Utf8Step step = next_utf8(bytes, i);
    if (!step.valid) {
      std::string shown;
      for (size_t k = i; k < std::min(bytes.size(), i + 4); ++k)
        shown += str(k > i ? " " : "", "0x", "0123456789ABCDEF"[uint8_t(bytes[k]) >> 4], "0123456789ABCDEF"[bytes[k] & 15]);
      BCOS_CHECK(false, what, ": invalid UTF-8 at byte offset ", i, " (", shown, ")");
    }
    out += step.cp;
    i += step.length;
  }
  return out;
}

std::u32string decode_utf8_replace(std::string_view bytes) {
  std::u32string out;
  for (size_t i = 0; i < bytes.size();) {
    const Utf8Step step = next_utf8(bytes, i);
    out += step.cp;
    i += step.length;
  }
  return out;
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

std::string html_unescape(std::string_view text) {
  return encode_utf8(unescape_once(decode_utf8(text, "html_unescape")));
}

std::string ftfy_fix_text(std::string_view text) { return encode_utf8(ftfy_fix(decode_utf8(text, "ftfy_fix_text"))); }

std::string clean_text(std::string_view text) { return encode_utf8(clean(decode_utf8(text, "clean_text"))); }

std::vector<std::string> split_pieces(std::string_view cleaned) {
  std::vector<std::string> out;
  for (const auto& p : pieces_of(decode_utf8(cleaned, "split_pieces"))) out.push_back(encode_utf8(p));
  return out;
}

// ---- ClipTokenizer ----------------------------------------------------------------------------

ClipTokenizer::ClipTokenizer(const std::string& bpe_path) {
  // Bytes map to characters: the printable Latin-1 bytes to themselves, the other 68 to
  // U+0100, U+0101, ... in byte order; the vocabulary lists them in that order.
  std::vector<int> order;
  std::vector<char32_t> chars;
  auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  for (int b = 0; b < 256; ++b)
    if (printable(b)) order.push_back(b), chars.push_back(char32_t(b));
  char32_t next = 256;
  for (int b = 0; b < 256; ++b)
    if (!printable(b)) order.push_back(b), chars.push_back(next++);
  for (size_t k = 0; k < 256; ++k) {
    byte_char_[order[k]] = encode_utf8(std::u32string(1, chars[k]));
    char_byte_[chars[k]] = uint8_t(order[k]);
  }

  const std::string text = read_gzip(bpe_path);
  decode_utf8(text, bpe_path);  // raises on invalid UTF-8
  std::vector<std::string_view> lines;
  for (size_t start = 0; start <= text.size() && int64_t(lines.size()) <= kMerges;) {
    const size_t end = std::min(text.find('\n', start), text.size());
    lines.emplace_back(text.data() + start, end - start);
    start = end + 1;
  }
  BCOS_CHECK(int64_t(lines.size()) > kMerges, "ClipTokenizer: ", bpe_path, " has ", lines.size(),
             " lines; CLIP's vocabulary needs a header line and ", kMerges, " merges");

  for (size_t k = 0; k < 256; ++k) vocab_.push_back(byte_char_[order[k]]);
  for (size_t k = 0; k < 256; ++k) vocab_.push_back(byte_char_[order[k]] + "</w>");
  for (int64_t m = 0; m < kMerges; ++m) {
    const std::string_view line = lines[size_t(m) + 1];
    const size_t space = line.find(' ');
    BCOS_CHECK(space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                   line.find_first_of(" \t\r", space + 1) == std::string_view::npos,
               "ClipTokenizer: ", bpe_path, " line ", m + 2, " is not a merge of two symbols: '", std::string(line), "'");
    merge_rank_.insert_or_assign(std::string(line), m);  // as Python's dict: a repeated pair keeps its last rank
    vocab_.push_back(std::string(line.substr(0, space)) + std::string(line.substr(space + 1)));
  }
  vocab_.push_back("<|startoftext|>");
  vocab_.push_back("<|endoftext|>");
  for (size_t k = 0; k < vocab_.size(); ++k) ids_.insert_or_assign(vocab_[k], int64_t(k));
}

const std::string& ClipTokenizer::token(int64_t id) const {
  BCOS_CHECK(id >= 0 && id < vocab_size(), "ClipTokenizer: token id ", id, " is outside the vocabulary [0, ",
             vocab_size(), ")");
  return vocab_[size_t(id)];
}

int64_t ClipTokenizer::id(const std::string& token) const {
  auto it = ids_.find(token);
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int64_t> ClipTokenizer::bpe(const std::string& piece) const {
  {
    std::shared_lock lock(cache_mutex_);
    if (auto it = cache_.find(piece); it != cache_.end()) return it->second;
  }
  std::vector<int64_t> ids;
  if (piece == "<|startoftext|>" || piece == "<|endoftext|>") {
    ids.push_back(piece == "<|startoftext|>" ? kStartOfText : kEndOfText);
  } else {
    std::vector<std::string> word;
    for (unsigned char b : piece) word.push_back(byte_char_[b]);
    word.back() += "</w>";
    while (word.size() > 1) {
      int64_t best = -1;
      size_t best_at = 0;
      for (size_t k = 0; k + 1 < word.size(); ++k) {
        auto it = merge_rank_.find(word[k] + ' ' + word[k + 1]);
        if (it != merge_rank_.end() && (best < 0 || it->second < best)) best = it->second, best_at = k;
      }
      if (best < 0) break;
      const std::string first = word[best_at], second = word[best_at + 1];
      std::vector<std::string> merged;
      for (size_t k = 0; k < word.size();) {
        if (k + 1 < word.size() && word[k] == first && word[k + 1] == second) {
          merged.push_back(first + second);
          k += 2;
        } else {
          merged.push_back(word[k++]);
        }
      }
      word = std::move(merged);
    }
    for (const auto& symbol : word) {
      const int64_t i = id(symbol);
      BCOS_CHECK(i >= 0, "ClipTokenizer: BPE produced '", symbol, "', which is not in the vocabulary");
      ids.push_back(i);
    }
  }
  std::unique_lock lock(cache_mutex_);
  if (cache_.size() > 1000000) cache_.clear();  // bounded: captions are open-ended
  cache_.emplace(piece, ids);
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  for (const auto& p : pieces_of(clean(decode_utf8(text, "ClipTokenizer::encode")))) {
    const std::vector<int64_t> part = bpe(encode_utf8(p));
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string bytes;
  for (int64_t i : ids)
    for (char32_t c : decode_utf8(token(i), "ClipTokenizer::decode")) {
      auto it = char_byte_.find(c);
      BCOS_CHECK(it != char_byte_.end(), "ClipTokenizer::decode: token ", i, " has a character outside the byte alphabet");
      bytes += char(it->second);
    }
  std::string text = encode_utf8(decode_utf8_replace(bytes));
  std::string out;
  for (size_t k = 0; k < text.size();) {
    if (text.compare(k, 4, "</w>") == 0) {
      out += ' ';
      k += 4;
    } else {
      out += text[k++];
    }
  }
  return out;
}

Tensor ClipTokenizer::tokenize(const std::vector<std::string>& texts, int64_t context_length, bool truncate) const {
  BCOS_CHECK(context_length > 0, "ClipTokenizer::tokenize: context_length must be positive, got ", context_length);
  const int64_t n = int64_t(texts.size());
  std::vector<int64_t> out(size_t(n * context_length), 0);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> ids{kStartOfText};
    const std::vector<int64_t> body = encode(texts[size_t(t)]);
    ids.insert(ids.end(), body.begin(), body.end());
    ids.push_back(kEndOfText);
    if (int64_t(ids.size()) > context_length) {
      const std::string& text = texts[size_t(t)];
      BCOS_CHECK(truncate, "ClipTokenizer::tokenize: text ", t, " (\"", text.substr(0, 40), text.size() > 40 ? "..." : "",
                 "\") is ", ids.size(), " tokens with start and end, more than the context length ", context_length,
                 "; pass truncate = true to cut it");
      ids.resize(size_t(context_length));
      ids.back() = kEndOfText;
    }
    std::copy(ids.begin(), ids.end(), out.begin() + t * context_length);
  }
  return from_vector(out, {n, context_length});
}

}  // namespace bcos::data
