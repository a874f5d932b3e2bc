// CLIP's tokenizer against OpenAI's published examples and tests/golden/tokenizer.safetensors
// (tools/golden/tokenizer.py: a reference from the published algorithm, on 1,658 texts), plus
// its errors. The vocabulary comes from $BCOS_DATA/data/clip (skipped when missing).
#include <fstream>
#include <thread>

#include <doctest/doctest.h>
#include <zlib.h>

#include "data/tokenizer.h"
#include "tests/data/helpers.h"
#include "tests/golden.h"

using namespace bcos;
using bcos::data::ClipTokenizer;

namespace {

const char* kVocab = "data/clip/bpe_simple_vocab_16e6.txt.gz";

// One tokenizer for all tests (reading the vocabulary takes a moment).
const ClipTokenizer* shared_tokenizer() {
  static const std::string path = testdata::find(kVocab);
  static const std::unique_ptr<ClipTokenizer> tok = path.empty() ? nullptr : std::make_unique<ClipTokenizer>(path);
  return tok.get();
}

// Strings packed as UTF-8 bytes + offsets [N + 1]; id lists as ids + offsets.
std::vector<std::string> unpack_strings(const golden::Fixtures& f, const std::string& name,
                                        const std::string& offsets = "") {
  const auto bytes = f[name].numel() ? f[name].to_vector<uint8_t>() : std::vector<uint8_t>{};
  const auto off = f[offsets.empty() ? name.substr(0, name.rfind('.')) + ".offsets" : offsets].to_vector<int64_t>();
  std::vector<std::string> out;
  for (size_t i = 0; i + 1 < off.size(); ++i)
    out.emplace_back(reinterpret_cast<const char*>(bytes.data()) + off[i], size_t(off[i + 1] - off[i]));
  return out;
}

std::vector<std::vector<int64_t>> unpack_ids(const golden::Fixtures& f, const std::string& ids, const std::string& offsets) {
  const auto flat = f[ids].to_vector<int64_t>();
  const auto off = f[offsets].to_vector<int64_t>();
  std::vector<std::vector<int64_t>> out;
  for (size_t i = 0; i + 1 < off.size(); ++i) out.emplace_back(flat.begin() + off[i], flat.begin() + off[i + 1]);
  return out;
}

std::vector<int64_t> row(const Tensor& t, int64_t i) { return t.select(0, i).contiguous().to_vector<int64_t>(); }

void write_gzip(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f);
  REQUIRE(gzwrite(f, text.data(), unsigned(text.size())) == int(text.size()));
  gzclose(f);
}

}  // namespace

TEST_CASE("tokenizer: OpenAI's examples") {
  const ClipTokenizer* tok = shared_tokenizer();
  if (!tok) return;
  const std::pair<std::string, std::vector<int64_t>> cases[] = {
      {"a photo of a cat.", {49406, 320, 1125, 539, 320, 2368, 269, 49407}},
      {"a photo of a goldfish.", {49406, 320, 1125, 539, 320, 40293, 269, 49407}},
      {"A bad photo of the Great White Shark!", {49406, 320, 2103, 1125, 539, 518, 830, 1579, 7980, 256, 49407}},
  };
  for (const auto& [text, expected] : cases) {
    CAPTURE(text);
    Tensor ids = tok->tokenize({text});
    CHECK(ids.dtype() == kInt64);
    CHECK(ids.shape() == Shape{1, 77});
    std::vector<int64_t> padded = expected;
    padded.resize(77, 0);
    CHECK(row(ids, 0) == padded);
    CHECK(tok->decode(std::vector<int64_t>(expected.begin() + 1, expected.end() - 1)) ==
          tok->decode(tok->encode(text)));
  }
  Tensor both = tok->tokenize({"a photo of a cat.", "a photo of a goldfish."}, 10);
  CHECK(both.shape() == Shape{2, 10});
  CHECK(row(both, 1) == std::vector<int64_t>{49406, 320, 1125, 539, 320, 40293, 269, 49407, 0, 0});
}

TEST_CASE("tokenizer: the vocabulary is laid out as OpenAI's") {
  const ClipTokenizer* tok = shared_tokenizer();
  if (!tok) return;
  CHECK(tok->vocab_size() == 49408);
  CHECK(tok->token(0) == "!");                          // the printable bytes first, in byte order
  CHECK(tok->token(93) == "~");
  CHECK(tok->token(94) == "\u00a1");
  CHECK(tok->token(188) == "\u0100");                   // then byte 0x00, moved to U+0100
  CHECK(tok->token(220) == "\u0120");                   // ... the space byte to U+0120
  CHECK(tok->token(255) == "\u0143");                   // ... and 0xAD, the 68th, to U+0143
  CHECK(tok->token(256) == "!</w>");                    // the same 256 ending a word
  CHECK(tok->token(512) == "in");                       // the first merge: "i n"
  CHECK(tok->token(49405) == tok->token(49405));
  CHECK(tok->token(49406) == "<|startoftext|>");
  CHECK(tok->token(49407) == "<|endoftext|>");
  CHECK(tok->id("cat</w>") == 2368);
  CHECK(tok->id("not a token") == -1);
}

TEST_CASE("tokenizer: matches the reference on 1,658 texts (cleaning, ids, decode, truncation)") {
  const golden::Fixtures f(golden::golden_dir() + "/tokenizer.safetensors");
  const auto texts = unpack_strings(f, "texts.bytes");
  const auto cleaned = unpack_strings(f, "cleaned.bytes");
  REQUIRE(texts.size() == cleaned.size());
  REQUIRE(texts.size() >= 1600);
  // Cleaning and splitting need no vocabulary.
  int clean_failures = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string got = data::clean_text(texts[i]);
    if (got != cleaned[i] && ++clean_failures <= 10) FAIL_CHECK("text " << i << " '" << texts[i] << "' cleans to '" << got << "', expected '" << cleaned[i] << "'");
  }
  CHECK(clean_failures == 0);

  const ClipTokenizer* tok = shared_tokenizer();
  if (!tok) return;
  const auto encoded = unpack_ids(f, "encode.ids", "encode.offsets");
  const auto decoded = unpack_strings(f, "decoded.bytes");
  const Tensor truncated = f["truncated"];
  const auto truncated_index = f["truncated.index"].to_vector<int64_t>();
  int failures = 0;
  int64_t long_texts = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int64_t> ids = tok->encode(texts[i]);
    if (ids != encoded[i] && ++failures <= 10) {
      std::string got, want;
      for (int64_t v : ids) got += std::to_string(v) + " ";
      for (int64_t v : encoded[i]) want += std::to_string(v) + " ";
      FAIL_CHECK("text " << i << " '" << texts[i] << "': ids " << got << "expected " << want);
    }
    if (tok->decode(encoded[i]) != decoded[i] && ++failures <= 10)
      FAIL_CHECK("text " << i << ": decode gives '" << tok->decode(encoded[i]) << "', expected '" << decoded[i] << "'");
    if (int64_t(encoded[i].size()) + 2 <= 77) {
      std::vector<int64_t> expected{ClipTokenizer::kStartOfText};
      expected.insert(expected.end(), encoded[i].begin(), encoded[i].end());
      expected.push_back(ClipTokenizer::kEndOfText);
      expected.resize(77, 0);
      if (row(tok->tokenize({texts[i]}), 0) != expected && ++failures <= 10) FAIL_CHECK("text " << i << ": tokenize row differs");
    } else {
      const auto at = std::find(truncated_index.begin(), truncated_index.end(), int64_t(i));
      REQUIRE(at != truncated_index.end());
      CHECK(row(tok->tokenize({texts[i]}, 77, true), 0) == row(truncated, at - truncated_index.begin()));
      CHECK(testdata::error_of([&] { tok->tokenize({texts[i]}); }).find("more than the context length 77") !=
            std::string::npos);
      ++long_texts;
    }
  }
  CHECK(failures == 0);
  CHECK(long_texts == int64_t(truncated_index.size()));

  // Random ids: byte tokens split characters, so decode must replace invalid UTF-8 as Python does.
  const Tensor random_ids = f["random.ids"];
  const auto random_text = unpack_strings(f, "random.bytes");
  for (int64_t r = 0; r < random_ids.size(0); ++r) CHECK(tok->decode(row(random_ids, r)) == random_text[size_t(r)]);
}

TEST_CASE("tokenizer: html_unescape matches Python's html.unescape") {
  const golden::Fixtures f(golden::golden_dir() + "/tokenizer.safetensors");
  const auto in = unpack_strings(f, "unescape.in.bytes");
  const auto out = unpack_strings(f, "unescape.out.bytes");
  REQUIRE(in.size() == out.size());
  REQUIRE(in.size() >= 60);
  for (size_t i = 0; i < in.size(); ++i) {
    CAPTURE(in[i]);
    CHECK(data::html_unescape(in[i]) == out[i]);
  }
  CHECK(data::html_unescape("&amp;lt;") == "&lt;");             // once here; clean_text unescapes twice
  CHECK(data::clean_text("&amp;lt; X &amp;AmP;") == "< x &amp;");  // ... then lower-cases (names are case-sensitive)
}

TEST_CASE("tokenizer: ftfy_fix_text matches the reference's ftfy.fix_text") {
  const golden::Fixtures f(golden::golden_dir() + "/tokenizer.safetensors");
  const auto in = unpack_strings(f, "ftfy.in.bytes");
  const auto out = unpack_strings(f, "ftfy.out.bytes");
  REQUIRE(in.size() == out.size());
  REQUIRE(in.size() >= 25);
  for (size_t i = 0; i < in.size(); ++i) {
    CAPTURE(in[i]);
    CHECK(data::ftfy_fix_text(in[i]) == out[i]);
  }
  // ftfy's documented examples.
  CHECK(data::ftfy_fix_text("\u201chere\u2019s a test\u201d") == "\"here's a test\"");
  CHECK(data::ftfy_fix_text("\ufb02u\ufb03e\ufb06") == "fluffiest");
  CHECK(data::ftfy_fix_text("\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33") == "LOUD NOISES");
  CHECK(data::ftfy_fix_text("P&EACUTE;REZ") == "P\u00c9REZ");
  CHECK(data::ftfy_fix_text("&ntilde; &Ntilde; &NTILDE; &nTILDE;") == "\u00f1 \u00d1 \u00d1 &nTILDE;");
  CHECK(data::ftfy_fix_text("\x1b[36;44mI'm blue\x1b[0m") == "I'm blue");
  // What the tokenizer sees: a curly apostrophe splits as "'s" does.
  CHECK(data::clean_text("It\u2019s \ufb01ne") == "it's fine");
}

TEST_CASE("tokenizer: pieces follow OpenAI's pattern") {
  using V = std::vector<std::string>;
  CHECK(data::split_pieces("it's a dog's life") == V{"it", "'s", "a", "dog", "'s", "life"});
  CHECK(data::split_pieces("!!<|endoftext|>") == V{"!!<|", "endoftext", "|>"});
  CHECK(data::split_pieces("hi<|endoftext|>") == V{"hi", "<|endoftext|>"});
  CHECK(data::split_pieces("2026ad") == V{"2", "0", "2", "6", "ad"});
  CHECK(data::split_pieces("caf\u00e9\u0301x") == V{"caf\u00e9", "\u0301", "x"});  // a mark is not a letter
  CHECK(data::split_pieces("'\u017f") == V{"'\u017f"});  // IGNORECASE: long s matches 's
  CHECK(data::split_pieces("a\u0345b") == V{"a", "b"});   // IGNORECASE: U+0345 matches no class
  CHECK(data::clean_text("\u039f\u0394\u039f\u03a3 \u03a3") == "\u03bf\u03b4\u03bf\u03c2 \u03c3");  // final sigma
  CHECK(data::clean_text("\u0130") == "i\u0307");
}

TEST_CASE("tokenizer: UTF-8 decoding replaces and rejects as Python does") {
  const std::u32string r = U"\uFFFD";
  CHECK(data::decode_utf8_replace("a\xE0\x80z") == U"a" + r + r + U"z");  // E0 needs A0..BF next
  CHECK(data::decode_utf8_replace("\xF0\x9F\x98") == r);                 // a truncated 4-byte sequence: one U+FFFD
  CHECK(data::decode_utf8_replace("\xC0\xAF") == r + r);                 // overlong
  CHECK(data::decode_utf8_replace("\xED\xA0\x80") == r + r + r);         // a surrogate
  CHECK(data::decode_utf8_replace("\xF4\x90\x80\x80") == r + r + r + r);  // past U+10FFFF
  CHECK(data::encode_utf8(U"\u00e9\U0001f431") == "\xC3\xA9\xF0\x9F\x90\xB1");
  const std::string err = testdata::error_of([] { data::clean_text("ok \xC3\x28 bad"); });
  CHECK(err.find("invalid UTF-8 at byte offset 3") != std::string::npos);
  CHECK(err.find("0xC3 0x28") != std::string::npos);
}

TEST_CASE("tokenizer: errors name the text, the id or the file") {
  testdata::TempDir dir;
  CHECK(testdata::error_of([&] { ClipTokenizer t(dir / "missing.txt.gz"); }).find("cannot open") != std::string::npos);
  {
    std::ofstream(dir / "corrupt.gz", std::ios::binary) << "\x1f\x8b\x08\x00garbage that is not deflate";
    CHECK(testdata::error_of([&] { ClipTokenizer t(dir / "corrupt.gz"); }).find("corrupt.gz") != std::string::npos);
  }
  write_gzip(dir / "short.txt.gz", "#version: 0.2\ni n\nt h\n");
  const std::string short_err = testdata::error_of([&] { ClipTokenizer t(dir / "short.txt.gz"); });
  CHECK(short_err.find("has 4 lines") != std::string::npos);
  std::string bad = "#version: 0.2\n";
  for (int i = 0; i < 48894; ++i) bad += i == 7 ? "oops\n" : "a b\n";
  write_gzip(dir / "bad.txt.gz", bad);
  CHECK(testdata::error_of([&] { ClipTokenizer t(dir / "bad.txt.gz"); }).find("line 9 is not a merge") != std::string::npos);

  const ClipTokenizer* tok = shared_tokenizer();
  if (!tok) return;
  std::string long_text;
  for (int i = 0; i < 80; ++i) long_text += "cat ";
  const std::string err = testdata::error_of([&] { tok->tokenize({"fine", long_text}); });
  CHECK(err.find("text 1 (\"cat cat") != std::string::npos);
  CHECK(err.find("82 tokens") != std::string::npos);
  CHECK(err.find("truncate") != std::string::npos);
  CHECK(row(tok->tokenize({long_text}, 77, true), 0).back() == ClipTokenizer::kEndOfText);
  CHECK(row(tok->tokenize({"a photo of a cat."}, 4, true), 0) == std::vector<int64_t>{49406, 320, 1125, 49407});
  CHECK(testdata::error_of([&] { tok->encode("bad \xFF byte"); }).find("invalid UTF-8 at byte offset 4") != std::string::npos);
  CHECK(testdata::error_of([&] { tok->decode({320, 49408}); }).find("token id 49408") != std::string::npos);
  CHECK(testdata::error_of([&] { tok->decode({-1}); }).find("token id -1") != std::string::npos);
  CHECK(testdata::error_of([&] { tok->tokenize({"x"}, 0); }).find("context_length") != std::string::npos);
  CHECK(tok->tokenize({}).shape() == Shape{0, 77});
}

TEST_CASE("tokenizer: threads share the tokenizer and its cache") {
  const ClipTokenizer* tok = shared_tokenizer();
  if (!tok) return;
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("a photo of item number " + std::to_string(i * 7919) + " in the wild");
  const Tensor expected = tok->tokenize(texts);
  std::vector<Tensor> got(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) threads.emplace_back([&, t] { got[t] = tok->tokenize(texts); });
  for (auto& th : threads) th.join();
  for (const Tensor& g : got) CHECK(g.to_vector<int64_t>() == expected.to_vector<int64_t>());
}
