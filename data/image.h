// Image files <-> tensors. Decoding (JPEG / PNG / BMP, via stb_image) always yields
// u8 [H, W, 3]: grey is replicated to RGB and alpha is dropped, as Pillow's convert("RGB")
// does; truncated files and absurd sizes raise instead of decoding to garbage. Encoding writes
// PNG or JPEG (stb_image_write) from u8 [H, W, C] or from f32 [C, H, W] in [0, 1], with
// C = 1 (grey), 3 (RGB) or 4 (RGBA).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tensor/files.h"
#include "tensor/tensor.h"

namespace bcos::data {

// `source` names the bytes in error messages: a file path, or "shard.tar: key".
Tensor decode_image(std::string_view bytes, const std::string& source);
Tensor read_image(const std::string& path);

std::string encode_png(const Tensor& image);
// Baseline JPEG (quality 1-100); alpha, if any, is dropped.
std::string encode_jpeg(const Tensor& image, int quality = 90);
// Written to a temporary file beside `path`, then renamed over it: never a half-written file.
void write_png(const Tensor& image, const std::string& path);

// Whole-file helpers (tensor/files.h), here too for the readers and writers of data/.
using bcos::read_file;
using bcos::write_file_atomic;

}  // namespace bcos::data
