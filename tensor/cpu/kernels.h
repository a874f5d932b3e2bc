// CPU kernels: the list every backend implements (tensor/kernels.inc), in namespace bcos::cpu.
// Op files do not call these directly but through tensor/dispatch.h.
#pragma once

#include <vector>

#include "tensor/op_kinds.h"
#include "tensor/tensor.h"

namespace bcos::cpu {
#include "tensor/kernels.inc"
}  // namespace bcos::cpu
