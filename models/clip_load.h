// Loading CLIP checkpoints (models/clip_load.cpp): OpenAI's released TorchScript .pt files
// (RN50.pt, ViT-B-32.pt, ...; most weights fp16), open_clip's .pt / .bin state dicts (optionally
// under "state_dict", keys optionally prefixed "module."), safetensors in OpenAI's names (as
// open_clip and bcos.cpp write them) and Hugging Face CLIPModel safetensors. The architecture is
// inferred from the tensors; weights become f32.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "models/clip.h"

namespace bcos::models {

struct ClipLoadOptions {
  // Files do not say which activation the model used: OpenAI's (and open_clip's "-quickgelu"
  // models) use QuickGELU, open_clip's other models exact GELU. bcos.cpp's own files say it in
  // their metadata, which wins.
  bool quick_gelu = true;
};

std::shared_ptr<Clip> load_clip(const std::string& path, const ClipLoadOptions& options = {});

// The state dict of any of those files in OpenAI's names (before any shape checks).
nn::StateDict read_clip_state_dict(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);

// Hugging Face CLIPModel names and layout -> OpenAI's: separate q/k/v projections concatenated
// into in_proj, visual_projection / text_projection transposed, pre_layrnorm -> ln_pre, ...
bool is_hf_clip(const nn::StateDict& state);
nn::StateDict clip_state_dict_from_hf(const nn::StateDict& hf);

}  // namespace bcos::models
