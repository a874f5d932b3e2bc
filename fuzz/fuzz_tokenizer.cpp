// Fuzz target: CLIP's tokenizer (data/tokenizer.cpp) on arbitrary bytes: UTF-8 decoding, HTML
// unescaping, cleaning, the split pattern, and (when OpenAI's vocabulary is found under
// $BCOS_DATA, default the checkout's ../shared) BPE encoding, tokenize with truncation, and decoding.
#include <filesystem>
#include <memory>

#include "data/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {
const bcos::data::ClipTokenizer* tokenizer() {
  static std::unique_ptr<bcos::data::ClipTokenizer> tok = [] {
    const char* root = std::getenv("BCOS_DATA");
    const std::string path = std::string(root && *root ? root : BCOS_SOURCE_ROOT "/../shared") +
                             "/data/clip/bpe_simple_vocab_16e6.txt.gz";
    if (!std::filesystem::exists(path)) {
      std::fprintf(stderr, "fuzz_tokenizer: %s not found (set BCOS_DATA): BPE encoding not fuzzed\n", path.c_str());
      return std::unique_ptr<bcos::data::ClipTokenizer>();
    }
    return std::make_unique<bcos::data::ClipTokenizer>(path);
  }();
  return tok.get();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = bcos::fuzz::as_view(data, size);
  (void)bcos::data::decode_utf8_replace(text);
  try {
    (void)bcos::data::decode_utf8(text, "fuzz text");
    const std::string cleaned = bcos::data::clean_text(text);
    (void)bcos::data::split_pieces(cleaned);
    if (const auto* tok = tokenizer()) {
      std::vector<int64_t> ids = tok->encode(text);
      (void)tok->decode(ids);
      (void)tok->tokenize({std::string(text)}, 77, true);
    }
  } catch (const bcos::Error&) {
  }
  return 0;
}
