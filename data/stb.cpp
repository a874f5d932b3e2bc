// The one translation unit that compiles stb_image and stb_image_write (Debian's libstb-dev
// headers). Static linkage keeps their symbols private to this file; data/image.cpp calls them
// through the thin wrappers below.
#include <cstddef>
#include <string>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
// Only the formats we promise. stb's TGA reader in particular has no magic number and would
// "decode" many a corrupt file into garbage instead of failing.
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace bcos::data::stb {

// Returns RGB pixels (caller frees with free_pixels) or nullptr with *reason set. stb keeps the
// failure reason in a thread-local, so decoding from several loader threads is safe.
unsigned char* decode_rgb(const unsigned char* bytes, int length, int* w, int* h,
                          const char** reason) {
  int channels = 0;
  unsigned char* pixels = stbi_load_from_memory(bytes, length, w, h, &channels, 3);
  if (!pixels) *reason = stbi_failure_reason();
  return pixels;
}

void free_pixels(unsigned char* pixels) { stbi_image_free(pixels); }

// The size from the header alone; false when stb does not recognise the format.
bool info(const unsigned char* bytes, int length, int* w, int* h) {
  int channels = 0;
  return stbi_info_from_memory(bytes, length, w, h, &channels) != 0;
}

static void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), size_t(size));
}

bool encode_png(const unsigned char* pixels, int w, int h, int channels, std::string* out) {
  return stbi_write_png_to_func(append_to_string, out, w, h, channels, pixels, w * channels) != 0;
}

bool encode_jpeg(const unsigned char* pixels, int w, int h, int channels, int quality, std::string* out) {
  return stbi_write_jpg_to_func(append_to_string, out, w, h, channels, pixels, quality) != 0;
}

}  // namespace bcos::data::stb
