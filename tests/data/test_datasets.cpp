// Image files, tar shards, WebDataset grouping, ImageFolder numbering, CIFAR-10 binaries.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "data/datasets.h"
#include "data/image.h"
#include "data/tar.h"
#include "data/transforms.h"
#include "data/webdataset.h"
#include "tests/data/tar_writer.h"
#include "tests/data/helpers.h"

using namespace bcos;
using namespace bcos::data;
using testdata::error_of;

namespace {

// A smooth test picture: u8 [h, w, c].
Tensor picture(int64_t h, int64_t w, int64_t c) {
  Tensor t = empty({h, w, c}, DType::u8);
  uint8_t* p = t.data<uint8_t>();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t k = 0; k < c; ++k) p[(y * w + x) * c + k] = uint8_t((y * 7 + x * 3 + k * 60) % 256);
  return t;
}

// A 24-bit BMP written by hand: bottom-up rows of BGR pixels, each row padded to 4 bytes.
std::string make_bmp(const Tensor& rgb) {
  const int64_t h = rgb.size(0), w = rgb.size(1), row = (w * 3 + 3) / 4 * 4;
  auto le = [](std::string& s, uint32_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) s += char((v >> (8 * i)) & 0xFF);
  };
  std::string b = "BM";
  le(b, uint32_t(54 + row * h), 4);
  le(b, 0, 4);
  le(b, 54, 4);
  le(b, 40, 4);
  le(b, uint32_t(w), 4);
  le(b, uint32_t(h), 4);
  le(b, 1, 2);
  le(b, 24, 2);
  for (int i = 0; i < 6; ++i) le(b, 0, 4);
  const auto px = rgb.to_vector<uint8_t>();
  for (int64_t y = h - 1; y >= 0; --y) {
    for (int64_t x = 0; x < w; ++x)
      for (int c = 2; c >= 0; --c) b += char(px[size_t((y * w + x) * 3 + c)]);
    b.append(size_t(row - w * 3), '\0');
  }
  return b;
}

void write(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}


bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("images: PNG round trips for RGB, RGBA, grey and f32 [C, H, W]; BMP decodes; JPEG close") {
  const Tensor rgb = picture(9, 13, 3);
  CHECK(decode_image(encode_png(rgb), "rgb").to_vector<uint8_t>() == rgb.to_vector<uint8_t>());
  // Alpha is dropped on decoding, grey replicated: as Pillow's convert("RGB").
  const Tensor rgba = picture(9, 13, 4);
  CHECK(decode_image(encode_png(rgba), "rgba").to_vector<uint8_t>() ==
        rgba.narrow(2, 0, 3).contiguous().to_vector<uint8_t>());
  const Tensor grey = picture(9, 13, 1);
  CHECK(decode_image(encode_png(grey), "grey").to_vector<uint8_t>() ==
        grey.expand({9, 13, 3}).contiguous().to_vector<uint8_t>());
  // BMP, bottom-up BGR with padded rows.
  CHECK(decode_image(make_bmp(picture(5, 7, 3)), "bmp").to_vector<uint8_t>() == picture(5, 7, 3).to_vector<uint8_t>());
  // f32 [C, H, W] in [0, 1] is written as round(255 v), clamped.
  const Tensor f = to_tensor(rgb);
  CHECK(decode_image(encode_png(f), "f32").to_vector<uint8_t>() == rgb.to_vector<uint8_t>());
  const Tensor out_of_range = full({3, 2, 2}, 1.7);
  CHECK(decode_image(encode_png(out_of_range), "clamped").to_vector<uint8_t>() == std::vector<uint8_t>(12, 255));
  // JPEG is lossy; at quality 95 a smooth picture comes back within a few levels.
  const Tensor back = decode_image(encode_jpeg(rgb, 95), "jpeg");
  const auto a = back.to_vector<uint8_t>(), b = rgb.to_vector<uint8_t>();
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  CHECK(worst <= 12);
  // Files go through a temporary and a rename.
  testdata::TempDir dir;
  write_png(rgb, dir / "x.png");
  CHECK(read_image(dir / "x.png").to_vector<uint8_t>() == rgb.to_vector<uint8_t>());
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator()) == 1);
}

TEST_CASE("images: corrupt, truncated and empty files raise errors naming their source") {
  const std::string jpeg = encode_jpeg(picture(16, 16, 3), 90), png = encode_png(picture(16, 16, 3));
  CHECK(contains(error_of([] { decode_image("", "empty.jpg"); }), "empty.jpg"));
  CHECK(contains(error_of([] { decode_image("this is not an image", "text.png"); }), "text.png"));
  for (size_t cut : {jpeg.size() / 4, jpeg.size() / 2, jpeg.size() - 2}) {
    CAPTURE(cut);
    CHECK(contains(error_of([&] { decode_image(jpeg.substr(0, cut), "shard.tar: key7"); }), "shard.tar: key7"));
  }
  // An end marker inside a header segment (as in an EXIF thumbnail) does not hide a truncation.
  const std::string app1 = std::string("\xFF\xE1\x00\x08" "Ex\xFF\xD9\x00\x00", 10);
  const std::string with_thumb = jpeg.substr(0, 2) + app1 + jpeg.substr(2);
  CHECK(decode_image(with_thumb, "thumb.jpg").shape() == Shape({16, 16, 3}));
  CHECK(contains(error_of([&] { decode_image(with_thumb.substr(0, with_thumb.size() * 3 / 5), "thumb.jpg"); }),
                 "truncated"));
  for (size_t cut : {size_t(8), png.size() / 2, png.size() - 12}) {
    CAPTURE(cut);
    CHECK(contains(error_of([&] { decode_image(png.substr(0, cut), "cut.png"); }), "cut.png"));
  }
  // A Huffman table of 16 x 19 = 304 symbols: stb 2.27 would write past its 257-entry table
  // (found by fuzz/fuzz_image.cpp); it is refused before stb sees it, after junk bytes and
  // behind an APP segment too.
  std::string dht = "\xFF\xC4";
  const size_t dht_length = 2 + 17 + 304;
  dht += char(dht_length >> 8), dht += char(dht_length & 0xFF), dht += char(0x00);
  dht += std::string(16, char(19)) + std::string(304, char(1));
  for (const std::string& prefix : {std::string(), app1, std::string("junk") + app1}) {
    const std::string bad = jpeg.substr(0, 2) + prefix + dht + jpeg.substr(2);
    CHECK(contains(error_of([&] { decode_image(bad, "huffman.jpg"); }), "huffman.jpg: corrupt JPEG (a Huffman table of 304 symbols"));
    // stb also reads fill bytes before the start-of-image marker
    CHECK(contains(error_of([&] { decode_image("\xFF\xFF" + bad.substr(1), "fill.jpg"); }), "fill.jpg: corrupt JPEG"));
  }
  // A scan using a table no DHT segment defined (stb would decode with uninitialised memory):
  // the encoder's tables renamed from class 0 / 1 to ids that scans do not use.
  std::string undefined = jpeg;
  for (size_t i = 2; i + 4 < undefined.size(); ++i)
    if (uint8_t(undefined[i]) == 0xFF && uint8_t(undefined[i + 1]) == 0xC4) {
      const size_t length = size_t(uint8_t(undefined[i + 2])) << 8 | uint8_t(undefined[i + 3]);
      for (size_t p = i + 4; p < i + 2 + length;) {
        size_t symbols = 0;
        for (int k = 1; k <= 16; ++k) symbols += uint8_t(undefined[p + size_t(k)]);
        undefined[p] = char(uint8_t(undefined[p]) | 0x03);  // table id 3
        p += 17 + symbols;
      }
      i += 1 + length;
    }
  CHECK(contains(error_of([&] { decode_image(undefined, "undefined.jpg"); }), "Huffman table 0, which is not defined"));
  std::string flipped = jpeg;
  for (size_t i = 2; i < 40; ++i) flipped[i] = char(0x5A);  // overwrite the headers
  CHECK(contains(error_of([&] { decode_image(flipped, "flipped.jpg"); }), "flipped.jpg"));
  CHECK(contains(error_of([] { read_image("/nonexistent/missing.png"); }), "/nonexistent/missing.png"));
  CHECK(contains(error_of([] { encode_png(zeros({3, 4, 4}, DType::f32).reshape({48})); }), "encode_png"));
  CHECK(contains(error_of([] { encode_png(zeros({4, 4, 2}, DType::u8)); }), "2 channels"));
}

TEST_CASE("datasets: tar reader walks members, and reports truncation with a byte offset") {
  testdata::TempDir dir;
  const std::string tar = testdata::make_tar({{"dir/", ""}, {"dir/a.txt", "hello"}, {"b.bin", std::string(700, 'x')}});
  write(dir / "t.tar", tar);
  TarReader reader(dir / "t.tar");
  TarMember m;
  REQUIRE(reader.next(m));
  CHECK(m.name == "dir/");
  CHECK(!m.is_file());
  REQUIRE(reader.next(m));
  CHECK(m.name == "dir/a.txt");
  CHECK(reader.read_data() == "hello");
  REQUIRE(reader.next(m));  // not read: skipped
  CHECK(m.size == 700);
  CHECK(!reader.next(m));
  // Layout: headers at 0, 512 and 1536; b.bin's data at 2048..2748, padded to 3072; end blocks.
  write(dir / "cut.tar", tar.substr(0, 2048 + 100));  // inside b.bin's data
  TarReader cut(dir / "cut.tar");
  const std::string err = error_of([&] {
    while (cut.next(m)) {}
  });
  CHECK(contains(err, "cut.tar"));
  CHECK(contains(err, "truncated"));
  CHECK(contains(err, "'b.bin' needs 700 bytes from byte offset 2048"));
  write(dir / "noend.tar", tar.substr(0, 3072));  // at a member boundary, before the end blocks
  TarReader noend(dir / "noend.tar");
  CHECK(contains(error_of([&] { while (noend.next(m)) {} }), "offset 3072"));
  // Cut inside a header, and a header with a wrong checksum.
  write(dir / "cut2.tar", tar.substr(0, 512 + 200));
  TarReader cut2(dir / "cut2.tar");
  CHECK(contains(error_of([&] { while (cut2.next(m)) {} }), "offset 512"));
  std::string bad = tar;
  bad[512 + 10] ^= 0x40;
  write(dir / "bad.tar", bad);
  TarReader badr(dir / "bad.tar");
  CHECK(contains(error_of([&] { while (badr.next(m)) {} }), "checksum at byte offset 512"));
  CHECK(contains(error_of([&] { TarReader r(dir / "nope.tar"); }), "nope.tar"));
  CHECK(contains(error_of([&] { TarReader r(dir.path.string()); }), "not a regular file"));
}

TEST_CASE("datasets: tar reader takes pax and GNU long names and base-256 sizes, rejects bad pax") {
  testdata::TempDir dir;
  const std::string long_name = "deep/" + std::string(120, 'd') + "/sample_1.cls";
  std::string tar = testdata::tar_member("PaxHeader", testdata::pax_record("path", long_name), 'x') +
                    testdata::tar_member("short", "7") +
                    testdata::tar_member("././@LongLink", std::string(110, 'g') + ".txt" + std::string(1, '\0'), 'L') +
                    testdata::tar_member("trunc", "text") + testdata::tar_member("plain.bin", "abc");
  // Base-256 size field on the last member: 0x80 then the size big-endian.
  const size_t last = tar.size() - 1024;
  std::memset(tar.data() + last + 124, 0, 12);
  tar[last + 124] = char(0x80);
  tar[last + 135] = 3;
  std::memset(tar.data() + last + 148, ' ', 8);
  unsigned sum = 0;
  for (size_t i = last; i < last + 512; ++i) sum += static_cast<unsigned char>(tar[i]);
  std::snprintf(tar.data() + last + 148, 8, "%06o", sum);
  tar += testdata::tar_end();
  write(dir / "ext.tar", tar);
  TarReader r(dir / "ext.tar");
  TarMember m;
  REQUIRE(r.next(m));
  CHECK(m.name == long_name);
  CHECK(r.read_data() == "7");
  REQUIRE(r.next(m));
  CHECK(m.name == std::string(110, 'g') + ".txt");
  CHECK(r.read_data() == "text");
  REQUIRE(r.next(m));
  CHECK(m.name == "plain.bin");
  CHECK(r.read_data() == "abc");
  CHECK(!r.next(m));
  // A pax size that is negative, not a number, or a record whose length lies: errors, not hangs.
  for (const std::string& record : {testdata::pax_record("size", "-1536"), testdata::pax_record("size", "12x"),
                                    std::string("99 path=x\n")}) {
    CAPTURE(record);
    write(dir / "badpax.tar", testdata::tar_member("PaxHeader", record, 'x') + testdata::tar_member("a.bin", "abc") +
                                  testdata::tar_end());
    TarReader bad(dir / "badpax.tar");
    CHECK(contains(error_of([&] { while (bad.next(m)) {} }), "malformed pax header at byte offset 0"));
  }
}

TEST_CASE("datasets: brace patterns expand as WebDataset's") {
  CHECK(expand_braces("s-{000000..000002}.tar") ==
        std::vector<std::string>{"s-000000.tar", "s-000001.tar", "s-000002.tar"});
  CHECK(expand_braces("{a,b}-{8..10}") == std::vector<std::string>{"a-8", "a-9", "a-10", "b-8", "b-9", "b-10"});
  CHECK(expand_braces("plain.tar") == std::vector<std::string>{"plain.tar"});
  CHECK_THROWS_AS(expand_braces("x-{1..}.tar"), Error);
  CHECK_THROWS_AS(expand_braces("x-{3..1}.tar"), Error);
  CHECK_THROWS_AS(expand_braces("x-{1..2.tar"), Error);
}

TEST_CASE("datasets: WebDataset groups members by key, maps fields by extension, flags what is missing") {
  testdata::TempDir dir;
  const std::string jpg = encode_jpeg(picture(8, 8, 3), 90), png = encode_png(picture(5, 7, 3));
  write(dir / "shard-0.tar", testdata::make_tar({
      {"a/s1.jpg", jpg}, {"a/s1.cls", "3\n"},
      {"a/s2.cls", "4"},                                   // no image
      {"s3.png", png}, {"s3.cls", "1"}, {"s3.txt", "a photo of a cat"}, {"s3.json", "{\"k\": 1}"},
      {"s3.extra.bin", "ignored"},
      {"s6.jpg", jpg}, {"s6.png", png}, {"s6.cls", "2"},  // two images
  }));
  write(dir / "shard-1.tar", testdata::make_tar({{"s4.jpg", jpg}, {"s4.cls", "x"}, {"s5.jpg", jpg}}));
  WebDataset ds(dir / "shard-{0..1}.tar");
  CHECK(ds.count() == 6);
  auto stream = ds.stream();
  Record r;
  std::string missing;
  REQUIRE(stream.next(r, &missing));
  CHECK(contains(r.name, "shard-0.tar: a/s1"));
  CHECK(r.label == 3);
  CHECK(missing.empty());
  CHECK(record_image(r).shape() == Shape({8, 8, 3}));
  REQUIRE(stream.next(r, &missing));
  CHECK(contains(r.name, "a/s2"));
  CHECK(contains(missing, "no image"));
  REQUIRE(stream.next(r, &missing));
  CHECK(contains(r.name, ": s3"));
  CHECK(r.label == 1);
  CHECK(r.text == "a photo of a cat");
  CHECK(r.json == "{\"k\": 1}");
  CHECK(record_image(r).shape() == Shape({5, 7, 3}));
  CHECK(missing.empty());
  REQUIRE(stream.next(r, &missing));
  CHECK(contains(missing, "a second image (s6.png)"));
  REQUIRE(stream.next(r, &missing));
  CHECK(contains(r.name, "shard-1.tar: s4"));
  CHECK(contains(missing, "bad label"));
  REQUIRE(stream.next(r, &missing));
  CHECK(contains(missing, "no label"));
  CHECK(!stream.next(r, &missing));
  // Without required labels a sample without .cls is fine (label -1).
  WebDataset text_only(dir / "shard-1.tar", WebDatasetOptions{.require_label = false});
  auto s2 = text_only.stream();
  REQUIRE(s2.next(r, &missing));
  REQUIRE(s2.next(r, &missing));
  CHECK(missing.empty());
  CHECK(r.label == -1);
  // Shuffling reorders but keeps every sample once, and is reproducible from the seed.
  auto names = [&](uint64_t seed) {
    std::vector<std::string> out;
    auto s = ds.stream(true, seed, 2);
    while (s.next(r, &missing)) out.push_back(r.name);
    return out;
  };
  auto x = names(1), y = names(1);
  CHECK(x == y);
  CHECK(x.size() == 6);
  std::vector<std::string> sorted_x = x;
  std::sort(sorted_x.begin(), sorted_x.end());
  CHECK(std::unique(sorted_x.begin(), sorted_x.end()) == sorted_x.end());
  bool any_different = false;
  for (uint64_t seed = 2; seed < 10; ++seed) any_different = any_different || names(seed) != x;
  CHECK(any_different);
}

TEST_CASE("datasets: ImageFolder numbers classes and files as torchvision does") {
  testdata::TempDir dir;
  namespace fs = std::filesystem;
  const std::string png = encode_png(picture(4, 4, 3));
  // Class names sort by code point: "C" < "a" < "b".
  for (const char* c : {"b", "a", "C"}) fs::create_directories(dir.path / c);
  fs::create_directories(dir.path / "a" / "nested");
  write(dir / "a/z.png", png);
  write(dir / "a/m.JPG", encode_jpeg(picture(4, 4, 3)));
  write(dir / "a/nested/b.png", png);
  write(dir / "a/notes.txt", "not an image");
  write(dir / "b/1.bmp", png);  // the extension decides what is listed, not the content
  write(dir / "C/x.jpeg", encode_jpeg(picture(4, 4, 3)));
  write(dir / "stray.png", png);  // files at the top level are not samples
  ImageFolder ds(dir.path.string());
  CHECK(ds.classes() == std::vector<std::string>{"C", "a", "b"});
  REQUIRE(ds.size() == 5);
  const std::vector<std::string> expect = {"C/x.jpeg", "a/m.JPG", "a/z.png", "a/nested/b.png", "b/1.bmp"};
  const std::vector<int64_t> labels = {0, 1, 1, 1, 2};
  for (int64_t i = 0; i < 5; ++i) {
    CHECK(ds.path(i) == dir / expect[size_t(i)]);
    CHECK(ds.label(i) == labels[size_t(i)]);
  }
  CHECK(record_image(ds.get(2)).shape() == Shape({4, 4, 3}));
  CHECK_THROWS_AS(ds.get(5), Error);
  fs::create_directories(dir.path / "empty_class");
  CHECK(contains(error_of([&] { ImageFolder bad(dir.path.string()); }), "empty_class"));
  CHECK(contains(error_of([] { ImageFolder bad("/nonexistent/folder"); }), "/nonexistent/folder"));
}

TEST_CASE("datasets: CIFAR-10 binary batches decode planes to HWC") {
  testdata::TempDir dir;
  std::string bytes;
  for (int rec = 0; rec < 3; ++rec) {
    bytes += char(rec * 4);  // labels 0, 4, 8
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 1024; ++i) bytes += char((rec * 50 + c * 80 + i) % 256);
  }
  write(dir / "test_batch.bin", bytes);
  Cifar10 ds(dir.path.string(), false);
  REQUIRE(ds.size() == 3);
  const Record r = ds.get(1);
  CHECK(r.label == 4);
  const auto px = r.pixels.to_vector<uint8_t>();
  CHECK(r.pixels.shape() == Shape({32, 32, 3}));
  CHECK(int(px[(5 * 32 + 7) * 3 + 2]) == (50 + 160 + 5 * 32 + 7) % 256);  // y 5, x 7, blue
  CHECK(Cifar10::classes()[4] == "deer");
  write(dir / "test_batch.bin", bytes.substr(0, 5000));
  CHECK(contains(error_of([&] { Cifar10 bad(dir.path.string(), false); }), "multiple"));
  CHECK(contains(error_of([&] { Cifar10 bad(dir.path.string(), true); }), "data_batch_1.bin"));
}
