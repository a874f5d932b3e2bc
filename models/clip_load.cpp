// CLIP checkpoints as people have them, read in C++ without running anything: OpenAI's
// TorchScript releases, open_clip / torch.save state dicts, safetensors in OpenAI's names, and
// Hugging Face CLIPModel files (renamed and re-laid-out to OpenAI's names here).
#include "models/clip_load.h"

#include <array>
#include <filesystem>
#include <fstream>
#include <map>

#include "autograd/ops.h"
#include "nn/safetensors.h"
#include "nn/torch_checkpoint.h"

namespace bcos::models {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Hugging Face's per-layer names -> OpenAI's, within one tower's encoder layer.
const std::pair<const char*, const char*> kHfLayerNames[] = {
    {"self_attn.out_proj.", "attn.out_proj."}, {"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."},
    {"mlp.fc1.", "mlp.c_fc."},                 {"mlp.fc2.", "mlp.c_proj."},
};

}  // namespace

bool is_hf_clip(const nn::StateDict& state) {
  return nn::find(state, "text_model.embeddings.token_embedding.weight") != nullptr;
}

nn::StateDict clip_state_dict_from_hf(const nn::StateDict& hf) {
  nn::StateDict out;
  // q / k / v of each layer are concatenated into in_proj in that order (PyTorch's packing).
  std::map<std::string, std::array<Tensor, 3>> qkv_weight, qkv_bias;
  std::vector<std::string> qkv_order;
  for (const auto& [key, t] : hf) {
    std::string ours;
    for (const auto& [hf_tower, our_tower] : {std::pair<std::string, std::string>{"vision_model.encoder.layers.",
                                                                                  "visual.transformer.resblocks."},
                                              {"text_model.encoder.layers.", "transformer.resblocks."}}) {
      if (!starts_with(key, hf_tower)) continue;
      const size_t dot = key.find('.', hf_tower.size());
      const std::string layer = key.substr(hf_tower.size(), dot - hf_tower.size()), rest = key.substr(dot + 1);
      const std::string prefix = our_tower + layer + ".";
      for (int i = 0; i < 3; ++i) {
        const std::string proj = std::string("self_attn.") + "qkv"[i] + "_proj.";
        if (starts_with(rest, proj)) {
          const bool weight = rest == proj + "weight";
          BCOS_CHECK(weight || rest == proj + "bias", "CLIP (Hugging Face): unexpected key '", key, "'");
          auto& slot = weight ? qkv_weight : qkv_bias;
          const std::string name = prefix + (weight ? "attn.in_proj_weight" : "attn.in_proj_bias");
          if (!slot.count(name)) qkv_order.push_back(name);
          slot[name][size_t(i)] = t;
          ours = "-";  // handled below
        }
      }
      for (const auto& [from, to] : kHfLayerNames)
        if (ours.empty() && starts_with(rest, from)) ours = prefix + to + rest.substr(std::string(from).size());
      BCOS_CHECK(!ours.empty(), "CLIP (Hugging Face): unexpected key '", key, "'");
    }
    if (ours == "-") continue;
    if (ours.empty()) {
      static const std::pair<const char*, const char*> kTopLevel[] = {
          {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"},
          {"vision_model.embeddings.class_embedding", "visual.class_embedding"},
          {"vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"},
          {"vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"},
          {"vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"},
          {"vision_model.post_layernorm.weight", "visual.ln_post.weight"},
          {"vision_model.post_layernorm.bias", "visual.ln_post.bias"},
          {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
          {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
          {"text_model.final_layer_norm.weight", "ln_final.weight"},
          {"text_model.final_layer_norm.bias", "ln_final.bias"},
          {"logit_scale", "logit_scale"},
      };
      for (const auto& [from, to] : kTopLevel)
        if (key == from) ours = to;
      if (key == "visual_projection.weight" || key == "text_projection.weight") {  // [embed, width] -> [width, embed]
        BCOS_CHECK(t.dim() == 2, "CLIP (Hugging Face): ", key, " is ", t.shape(), ", expected 2-D");
        out.emplace_back(key == "visual_projection.weight" ? "visual.proj" : "text_projection",
                         t.transpose(0, 1).contiguous());
        continue;
      }
      if (ours.empty() && key.size() >= 12 && key.substr(key.size() - 12) == "position_ids") continue;  // an index buffer
      BCOS_CHECK(!ours.empty(), "CLIP (Hugging Face): unexpected key '", key, "'");
    }
    out.emplace_back(ours, t);
  }
  for (const std::string& name : qkv_order) {
    auto& parts = name.size() > 6 && name.substr(name.size() - 6) == "weight" ? qkv_weight[name] : qkv_bias[name];
    for (int i = 0; i < 3; ++i)
      BCOS_CHECK(parts[size_t(i)].defined(), "CLIP (Hugging Face): ", name, " lacks its ", "qkv"[i], " projection");
    out.emplace_back(name, cat({parts[0], parts[1], parts[2]}, 0));
  }
  return out;
}

nn::StateDict read_clip_state_dict(const std::string& path, std::map<std::string, std::string>* metadata) {
  BCOS_CHECK(std::filesystem::exists(path), "load_clip: ", path, " does not exist");
  nn::StateDict state;
  std::string head(9, '\0');
  {
    std::ifstream f(path, std::ios::binary);
    f.read(head.data(), 9);
    head.resize(size_t(f.gcount()));
  }
  const bool safetensors = head.size() == 9 && head[8] == '{';
  state = safetensors ? nn::load_safetensors(path, metadata) : nn::load_checkpoint(path);
  state = nn::strip_wrapper_prefixes(std::move(state));  // open_clip / DataParallel training checkpoints
  if (is_hf_clip(state)) state = clip_state_dict_from_hf(state);
  return state;
}

std::shared_ptr<Clip> load_clip(const std::string& path, const ClipLoadOptions& options) {
  std::map<std::string, std::string> meta;
  const nn::StateDict state = read_clip_state_dict(path, &meta);
  std::vector<std::pair<std::string, std::string>> metadata(meta.begin(), meta.end());
  try {
    auto model = clip_from_state_dict(state, metadata, options.quick_gelu);
    // OpenAI's TorchScript files carry their sizes as buffers: they must agree with the weights.
    for (const auto& [key, expected] : {std::pair<std::string, int64_t>{"input_resolution", model->config.image_resolution},
                                        {"context_length", model->config.context_length},
                                        {"vocab_size", model->config.vocab_size}})
      if (const Tensor* t = nn::find(state, key)) {
        const int64_t stored = int64_t(t->to(DType::f64).item());
        BCOS_CHECK(stored == expected, "the file says ", key, " = ", stored, " but its weights imply ", expected);
      }
    return model;
  } catch (const Error& e) {
    BCOS_CHECK(false, "load_clip: ", path, ": ", e.what());
  }
  return nullptr;
}

}  // namespace bcos::models
