// CLIP's text tokenizer: OpenAI's byte-level BPE, exactly (their simple_tokenizer.py; of the
// ftfy.fix_text it starts with, everything but the mojibake repair). Text is data, so it lives
// here: loader workers tokenise captions.
//
//   ClipTokenizer tok("../shared/data/clip/bpe_simple_vocab_16e6.txt.gz");
//   Tensor ids = tok.tokenize({"a photo of a cat."});  // i64 [1, 77]: 49406 320 1125 539 320 2368 269 49407 0 ...
//
// The steps, as OpenAI's: ftfy.fix_text's deterministic fixes per line until nothing changes
// (HTML references when the text has no '<', C1 controls as Windows-1252, Latin ligatures,
// fullwidth / halfwidth forms, curly quotes straightened, line breaks, terminal escapes and
// invisible controls removed, NFC), then HTML references unescaped twice (html.unescape's rules, named and
// numeric), whitespace runs collapsed to one space, stripped, lower-cased as Python's
// str.lower() (İ becomes i + U+0307; a word-final Σ becomes ς); split by their pattern
// (the two special tokens, 's 't 're 've 'm 'll 'd, runs of letters, single digits, runs of
// other non-space characters; Unicode categories from utf8proc); each piece's UTF-8 bytes
// mapped to 256 printable characters and merged by BPE rank (48,894 merges; 49,408 tokens).
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::data {

class ClipTokenizer {
 public:
  static constexpr int64_t kStartOfText = 49406, kEndOfText = 49407, kVocabSize = 49408;
  static constexpr int64_t kMerges = 48894;  // 49,408 = 256 bytes + the same with </w> + merges + 2 specials

  // Reads the merges from OpenAI's gzip file (bpe_simple_vocab_16e6.txt.gz).
  explicit ClipTokenizer(const std::string& bpe_path);

  // The BPE ids of a text, without start / end tokens. Invalid UTF-8 raises, naming the offset.
  std::vector<int64_t> encode(std::string_view text) const;
  // Ids back to text: tokens joined, bytes decoded as UTF-8 (invalid sequences become U+FFFD,
  // as Python's errors="replace"), each end-of-word mark a space.
  std::string decode(const std::vector<int64_t>& ids) const;
  // i64 [N, context_length]: start, ids, end, zeros. A text that does not fit raises, or with
  // `truncate` keeps the first context_length − 1 tokens and ends with the end token.
  Tensor tokenize(const std::vector<std::string>& texts, int64_t context_length = 77, bool truncate = false) const;

  int64_t vocab_size() const { return int64_t(vocab_.size()); }
  const std::string& token(int64_t id) const;  // the vocabulary string (byte characters, "</w>")
  int64_t id(const std::string& token) const;  // -1 when absent

 private:
  std::vector<int64_t> bpe(const std::string& piece) const;  // piece: raw UTF-8 bytes

  std::vector<std::string> vocab_;                       // id -> token (byte characters)
  std::unordered_map<std::string, int64_t> ids_;         // token -> id (the last id on duplicates, as a dict)
  std::unordered_map<std::string, int64_t> merge_rank_;  // "first second" -> rank
  std::string byte_char_[256];                           // byte -> its character, UTF-8
  std::unordered_map<uint32_t, uint8_t> char_byte_;      // character -> byte
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

// The pieces of CLIP's text pipeline, for tests and for other tokenizers.
std::string html_unescape(std::string_view text);  // Python's html.unescape, once
std::string ftfy_fix_text(std::string_view text);  // ftfy.fix_text without its mojibake repair
std::string clean_text(std::string_view text);     // ftfy, unescape twice, whitespace, strip, lower
std::vector<std::string> split_pieces(std::string_view cleaned);  // OpenAI's pattern, on clean text

// UTF-8 helpers. decode_utf8 raises bcos::Error naming `what` and the byte offset of the first
// invalid sequence; decode_utf8_replace substitutes U+FFFD per maximal invalid subpart.
std::u32string decode_utf8(std::string_view bytes, std::string_view what);
std::u32string decode_utf8_replace(std::string_view bytes);
std::string encode_utf8(std::u32string_view text);

}  // namespace bcos::data
