// safetensors, the native checkpoint format: an 8-byte little-endian header length, a JSON
// header {"name": {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {...}},
// then the raw little-endian tensor bytes. The reader maps the file and copies every tensor
// into a fresh, 64-byte-aligned CPU tensor, so the mapping is closed before it returns (the
// file's data offsets need not be aligned for the dtype, and no tensor outlives a file that
// is later replaced). Every header field is checked, and the byte ranges must tile the data
// section exactly, as the format requires (no overlaps, no holes: no polyglot files).
#pragma once

#include <map>
#include <string>

#include "nn/state_dict.h"

namespace bcos::nn {

// Tensors in the order of their bytes in the file. Dtypes: F32, F64, F16, BF16, I64, U8, BOOL.
StateDict load_safetensors(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr);

// Writes to a temporary file beside `path`, then renames it over `path`. Tensors (on any
// device, any strides) are written contiguous, sorted by name as tools/golden/safetensors_io.py
// writes them; the header is padded with spaces to a multiple of 8 bytes.
void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace bcos::nn
