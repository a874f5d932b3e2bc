// PyTorch checkpoints (torch.save), read without Python and without running any of the
// pickled code: both formats go through the allow-list unpickler of nn/pickle.h.
//  - zip (torch.save since 1.6): <archive>/data.pkl is the pickle; each storage is a persistent
//    id ('storage', torch.<Type>Storage, key, location, numel) whose bytes are the stored entry
//    <archive>/data/<key>; <archive>/byteorder, when present, must be "little".
//  - legacy (_use_new_zipfile_serialization=False, and everything before 1.6): pickles of the
//    magic number, the protocol version 1001 and a system-info dict, then the object, then a
//    list of storage keys; after them, for each key in that order, an int64 element count and
//    the raw little-endian elements. Persistent ids are ('storage', class, key, location,
//    numel, view) with view None or (view_key, offset, numel).
//  - TorchScript (torch.jit.save, e.g. OpenAI's released CLIP .pt files): the zip layout above
//    plus <archive>/constants.pkl and code/; data.pkl pickles the module tree as instances of
//    __torch__.* classes, which load as inert objects (never called); every tensor attribute
//    becomes a state-dict entry under its dotted path ("visual.conv1.weight").
// The object may be the state dict itself (an OrderedDict of tensors) or a dict wrapping it
// under "state_dict", "model_state_dict" or "model" (Lightning, training scripts; other entries
// such as "epoch" or "best_prec1" are ignored). Inside the state dict, None / bool / int /
// float / str entries are skipped; other non-tensors are an error.
//
// Tensors come back as fresh, contiguous CPU tensors in their stored dtype (IntStorage,
// ShortStorage and CharStorage, which bcos lacks, widened exactly to int64); views and offsets
// into shared storages are resolved by copying just the viewed elements, so tensors that shared
// a storage in PyTorch no longer share memory here.
#pragma once

#include <string>

#include "nn/state_dict.h"

namespace bcos::nn {

// A torch.save file, zip or legacy.
StateDict load_torch_checkpoint(const std::string& path);

// Any checkpoint bcos reads, told apart by its first bytes: safetensors, a torch zip file, or a
// legacy torch file.
StateDict load_checkpoint(const std::string& path);

}  // namespace bcos::nn
