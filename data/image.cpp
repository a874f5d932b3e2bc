// Image decoding and PNG / JPEG encoding on top of stb (data/stb.cpp), with the checks stb leaves to
// its caller: sizes that fit an int, truncated JPEGs, tensors of the wrong layout.
#include "data/image.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <unistd.h>

namespace bcos::data {

namespace stb {
unsigned char* decode_rgb(const unsigned char* bytes, int length, int* w, int* h,
                          const char** reason);
void free_pixels(unsigned char* pixels);
bool info(const unsigned char* bytes, int length, int* w, int* h);
bool encode_png(const unsigned char* pixels, int w, int h, int channels, std::string* out);
bool encode_jpeg(const unsigned char* pixels, int w, int h, int channels, int quality, std::string* out);
}  // namespace stb

namespace {

bool is_jpeg(std::string_view b) {
  return b.size() >= 3 && uint8_t(b[0]) == 0xFF && uint8_t(b[1]) == 0xD8 && uint8_t(b[2]) == 0xFF;
}

// stb decodes a JPEG cut short by padding the missing entropy-coded data, where Pillow (and
// libjpeg) report the file as truncated. A complete JPEG has its end-of-image marker FF D9
// after the first start-of-scan (FF DA); before it, FF D9 may occur inside an EXIF thumbnail,
// and within scan data FF is always followed by 00 or a restart marker, never D9. So: walk the
// header segments to the first scan, then look for FF D9 after it (searching from the end, where
// it normally is). Returns false for a truncated file; malformed headers are left to stb.
bool jpeg_is_complete(std::string_view b) {
  auto at = [&](size_t i) { return static_cast<unsigned char>(b[i]); };
  size_t pos = 2, scan = 0;
  while (scan == 0) {
    if (pos + 4 > b.size()) return false;  // ran out inside the headers
    if (at(pos) != 0xFF) return true;
    const unsigned char marker = at(pos + 1);
    if (marker == 0xFF) {  // fill byte
      ++pos;
    } else if (marker == 0xDA) {
      scan = pos;
    } else if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      pos += 2;
    } else {
      pos += 2 + (size_t(at(pos + 2)) << 8 | at(pos + 3));
    }
  }
  for (size_t i = b.size() - 1; i > scan + 1; --i)
    if (at(i) == 0xD9 && at(i - 1) == 0xFF) return true;
  return false;
}

// stb_image 2.27 (Debian's) trusts a JPEG's Huffman tables more than it should (both found by
// fuzz/fuzz_image.cpp, both checked by stb 2.28): it builds a table without checking that its
// code lengths define at most 256 symbols, writing past the table when they define more, and a
// scan may use a table no DHT segment defined, decoding with uninitialised memory (symbol
// indices from it read anywhere). So every marker stb could reach is walked here first, as stb
// finds them (fill bytes and junk between segments skipped, entropy-coded data crossed, since
// there FF is followed by 00 or a restart marker), each table read as stb reads it (bytes past
// the end read as 0), and each scan's tables checked, as stb uses them. Returns what is wrong,
// or "" (also for files stb will reject by itself).
std::string jpeg_huffman_problem(std::string_view b) {
  auto at = [&](size_t i) -> unsigned { return i < b.size() ? static_cast<unsigned char>(b[i]) : 0u; };
  // stb takes FF (FF ...) D8 at the start for a JPEG's start-of-image marker
  if (at(0) != 0xFF) return "";
  size_t pos = 1;
  while (pos < b.size() && at(pos) == 0xFF) ++pos;
  if (at(pos) != 0xD8) return "";
  ++pos;
  bool defined[2][4] = {};  // [DC / AC][table id]
  bool progressive = false;
  while (pos < b.size()) {
    if (at(pos) != 0xFF) {  // junk, or entropy-coded data
      ++pos;
      continue;
    }
    while (pos < b.size() && at(pos) == 0xFF) ++pos;  // fill bytes
    if (pos >= b.size()) break;
    const unsigned marker = at(pos++);
    if (marker == 0xD9) break;                                                              // end of image
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // no length
    const int64_t length = int64_t(at(pos) << 8 | at(pos + 1));
    if (marker == 0xC2) progressive = true;
    if (marker == 0xC4) {  // define Huffman tables
      size_t p = pos + 2;
      for (int64_t left = length - 2; left > 0;) {
        const unsigned table = at(p++);
        int64_t symbols = 0;
        for (int i = 0; i < 16; ++i) symbols += at(p++);
        if (symbols > 256) return str("a Huffman table of ", symbols, " symbols (256 at most)");
        if ((table >> 4) <= 1 && (table & 15) <= 3) defined[table >> 4][table & 15] = true;
        p += size_t(symbols);
        left -= 17 + symbols;
      }
    } else if (marker == 0xDA) {  // start of scan: components, then Ss, Se, Ah / Al
      const size_t p = pos + 2;
      const unsigned components = at(p), ss = at(p + 1 + 2 * components), ah = at(p + 3 + 2 * components) >> 4;
      const bool uses_dc = !progressive || (ss == 0 && ah == 0), uses_ac = !progressive || ss != 0;
      for (unsigned c = 0; c < components; ++c) {
        const unsigned dc = at(p + 2 + 2 * c) >> 4, ac = at(p + 2 + 2 * c) & 15;
        if (uses_dc && dc <= 3 && !defined[0][dc]) return str("a scan uses DC Huffman table ", dc, ", which is not defined");
        if (uses_ac && ac <= 3 && !defined[1][ac]) return str("a scan uses AC Huffman table ", ac, ", which is not defined");
      }
    }
    pos += size_t(std::max<int64_t>(length, 2));
  }
  return "";
}

// stb grows its buffer for a PNG's compressed data to the length an IDAT chunk declares before
// reading it, so 200 bytes claiming a 2 GB chunk make it allocate 2 GB (found by
// fuzz/fuzz_image.cpp). Every chunk up to IEND must fit in the file. Returns the first chunk that
// does not, as "IDAT (2147483648 bytes at offset 100)", or "" when all fit.
std::string png_oversized_chunk(std::string_view b) {
  auto u32 = [&](size_t i) {
    return uint32_t(uint8_t(b[i])) << 24 | uint32_t(uint8_t(b[i + 1])) << 16 | uint32_t(uint8_t(b[i + 2])) << 8 |
           uint32_t(uint8_t(b[i + 3]));
  };
  for (size_t pos = 8; pos + 8 <= b.size();) {
    const uint64_t length = u32(pos);
    std::string type(b.substr(pos + 4, 4));
    for (char& c : type) c = (c >= 0x20 && c < 0x7F) ? c : '?';
    if (length + 12 > b.size() - pos) return str(type, " (", length, " bytes at offset ", pos, ")");
    if (type == "IEND") break;
    pos += 12 + size_t(length);
  }
  return "";
}

// stb reads an uncompressed BMP cut short as black pixels: check the pixel array fits the file.
bool bmp_is_complete(std::string_view b) {
  if (b.size() < 54) return false;
  auto u32 = [&](size_t i) {
    return uint32_t(uint8_t(b[i])) | uint32_t(uint8_t(b[i + 1])) << 8 | uint32_t(uint8_t(b[i + 2])) << 16 |
           uint32_t(uint8_t(b[i + 3])) << 24;
  };
  const uint32_t offset = u32(10), header = u32(14);
  if (header < 40) return true;  // old OS/2 header: left to stb
  const int64_t w = int32_t(u32(18)), h = std::abs(int64_t(int32_t(u32(22))));
  const int bpp = uint8_t(b[28]) | uint8_t(b[29]) << 8;
  const uint32_t compression = u32(30);
  if (compression != 0 && compression != 3) return true;  // RLE: sizes vary, left to stb
  const int64_t row = (w * bpp + 31) / 32 * 4;
  return int64_t(offset) + row * h <= int64_t(b.size());
}

// Pillow's decompression-bomb limit: it refuses images over twice its 89.5 M-pixel warning.
constexpr int64_t kMaxPixels = 178956970;

}  // namespace

Tensor decode_image(std::string_view bytes, const std::string& source) {
  BCOS_CHECK(!bytes.empty(), "decode_image: ", source, ": empty file");
  BCOS_CHECK(bytes.size() < size_t(INT32_MAX), "decode_image: ", source, ": ", bytes.size(),
             " bytes is more than stb_image can read (2 GB)");
  if (is_jpeg(bytes) && !jpeg_is_complete(bytes))
    fail("decode_image: ", source, ": truncated JPEG (", bytes.size(),
         " bytes, no end-of-image marker)");
  if (const std::string problem = jpeg_huffman_problem(bytes); !problem.empty())
    fail("decode_image: ", source, ": corrupt JPEG (", problem, ")");
  int w = 0, h = 0;
  if (!stb::info(reinterpret_cast<const unsigned char*>(bytes.data()), int(bytes.size()), &w, &h))
    fail("decode_image: ", source, ": not a JPEG, PNG or BMP image, or its header is corrupt");
  if (int64_t(w) * int64_t(h) > kMaxPixels)
    fail("decode_image: ", source, ": ", w, "x", h, " pixels is over the ", kMaxPixels,
         "-pixel limit (a corrupt header, or a decompression bomb)");
  if (bytes.size() >= 8 && bytes.substr(0, 8) == "\x89PNG\r\n\x1a\n")
    if (const std::string chunk = png_oversized_chunk(bytes); !chunk.empty())
      fail("decode_image: ", source, ": truncated or corrupt PNG (chunk ", chunk, " runs past the end of the ",
           bytes.size(), "-byte file)");
  if (bytes.size() >= 2 && bytes[0] == 'B' && bytes[1] == 'M' && !bmp_is_complete(bytes))
    fail("decode_image: ", source, ": truncated BMP (", bytes.size(), " bytes, fewer than its header promises)");
  const char* reason = "unknown error";
  unsigned char* pixels = stb::decode_rgb(reinterpret_cast<const unsigned char*>(bytes.data()),
                                          int(bytes.size()), &w, &h, &reason);
  if (!pixels) fail("decode_image: ", source, ": not a decodable image (", reason, ")");
  Tensor out;
  try {
    out = empty({h, w, 3}, DType::u8);
    std::memcpy(out.data<uint8_t>(), pixels, size_t(h) * size_t(w) * 3);
  } catch (...) {
    stb::free_pixels(pixels);
    throw;
  }
  stb::free_pixels(pixels);
  return out;
}

Tensor read_image(const std::string& path) { return decode_image(read_file(path), path); }

namespace {

// u8 [H, W, C] contiguous, from u8 [H, W, C] or f32 / f64 [C, H, W] in [0, 1].
Tensor to_hwc_u8(const Tensor& image, const char* op) {
  BCOS_CHECK(image.is_cpu(), op, ": the image is on ", image.device(), "; call .to(\"cpu\")");
  BCOS_CHECK(image.dim() == 3, op, ": expected u8 [H, W, C] or f32 [C, H, W], got ",
             dtype_name(image.dtype()), " ", image.shape());
  Tensor hwc;  // u8 [H, W, C], contiguous
  if (image.dtype() == DType::u8) {
    hwc = image.contiguous();
  } else {
    BCOS_CHECK(image.dtype() == DType::f32 || image.dtype() == DType::f64,
               op, ": expected u8 [H, W, C] or f32 [C, H, W], got ",
               dtype_name(image.dtype()), " ", image.shape());
    Tensor chw = image.to(DType::f32).contiguous();
    const int64_t c = chw.size(0), h = chw.size(1), w = chw.size(2);
    hwc = empty({h, w, c}, DType::u8);
    const float* src = chw.data<float>();
    uint8_t* dst = hwc.data<uint8_t>();
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = 0; i < h * w; ++i) {
        float v = src[ch * h * w + i];
        v = std::isnan(v) ? 0.f : std::min(std::max(v, 0.f), 1.f);
        dst[i * c + ch] = uint8_t(std::lround(v * 255.f));
      }
  }
  return hwc;
}

}  // namespace

std::string encode_png(const Tensor& image) {
  Tensor hwc = to_hwc_u8(image, "encode_png");
  const int64_t h = hwc.size(0), w = hwc.size(1), c = hwc.size(2);
  BCOS_CHECK(c == 1 || c == 3 || c == 4, "encode_png: ", c,
             " channels; PNG takes 1 (grey), 3 (RGB) or 4 (RGBA); shape ", image.shape());
  BCOS_CHECK(h > 0 && w > 0 && h * w * c < INT32_MAX, "encode_png: cannot encode an image of shape ",
             image.shape());
  std::string out;
  BCOS_CHECK(stb::encode_png(hwc.data<uint8_t>(), int(w), int(h), int(c), &out),
             "encode_png: stb_image_write failed for shape ", image.shape());
  return out;
}

std::string encode_jpeg(const Tensor& image, int quality) {
  Tensor hwc = to_hwc_u8(image, "encode_jpeg");
  const int64_t h = hwc.size(0), w = hwc.size(1), c = hwc.size(2);
  BCOS_CHECK(c == 1 || c == 3 || c == 4, "encode_jpeg: ", c, " channels; expected 1, 3 or 4; shape ",
             image.shape());
  BCOS_CHECK(quality >= 1 && quality <= 100, "encode_jpeg: quality ", quality, " outside 1-100");
  BCOS_CHECK(h > 0 && w > 0 && h < 65536 && w < 65536, "encode_jpeg: cannot encode an image of shape ",
             image.shape());
  std::string out;
  BCOS_CHECK(stb::encode_jpeg(hwc.data<uint8_t>(), int(w), int(h), int(c), quality, &out),
             "encode_jpeg: stb_image_write failed for shape ", image.shape());
  return out;
}

void write_png(const Tensor& image, const std::string& path) {
  write_file_atomic(path, encode_png(image));
}

}  // namespace bcos::data
