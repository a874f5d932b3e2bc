// The CUDA emulator's cuDNN graph API: the backend descriptors tensor/cuda/conv_graph.cu builds
// for one convolution (tensor, convolution, the three convolution operations, operation graph,
// heuristics, engine configuration, engine, execution plan, variant pack), written from the
// documented contract: attributes of the documented type and count on descriptors of the right
// kind, referenced descriptors finalized, nothing set after finalization, results copied into
// descriptors the caller created, every required attribute present at finalization, and each
// pointer of a variant pack at least as aligned as its tensor said. Anything else is refused
// with CUDNN_STATUS_BAD_PARAM, which the backend raises.
//
// The engines: the heuristics (any mode but FALLBACK) rank three -- engine 7, which down-converts
// its inputs (its result here is NaN, so that a backend which does not leave it out, as PyTorch
// does, fails its tests), engine 0, the legacy stand-in's fast algorithm (tensor cores: TF32 for
// float32; nondeterministic backwards; a workspace; the runtime::FastAlgorithms refusals), and
// engine 1, its plain deterministic one (FMA math, no workspace); FALLBACK lists engine 1 again
// (the lists overlap, as cuDNN's do) and engine 0 with another setting of its one knob (a tile
// size: a configuration of its own, computing alike). Engines 0 and 1 run through the legacy
// stand-in (libraries.cpp), so both APIs compute alike.
#include <cudnn.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <vector>

#include "tensor/cuda/emulator/blas_values.h"
#include "tensor/cuda/emulator/runtime.h"

namespace {

constexpr int64_t kDownConverting = 7, kFast = 0, kPlain = 1;
std::atomic<bool> g_offer_engines{true};

struct Backend;
using Snapshot = std::shared_ptr<const Backend>;

// An engine configuration: the engine and its knobs' settings.
struct Knob {
  cudnnBackendKnobType_t type;
  int64_t value;
};
struct Config {
  int64_t engine;
  std::vector<Knob> knobs;
};

// One attribute's value: raw elements, or (BACKEND_DESCRIPTOR) copies of the descriptors.
struct Attribute {
  cudnnBackendAttributeType_t type{};
  int64_t count = 0;
  std::vector<unsigned char> bytes;
  std::vector<Snapshot> descriptors;
};

// What a cudnnBackendDescriptor_t points at.
struct Backend {
  cudnnBackendDescriptorType_t kind{};
  bool finalized = false;
  std::map<cudnnBackendAttributeName_t, Attribute> attributes;
  int64_t engine = -1;                // ENGINE / ENGINECFG / EXECUTION_PLAN
  std::vector<Knob> knobs;            // ENGINECFG: its settings; KNOB_CHOICE: the one it is
  Snapshot graph;                     // ENGINEHEUR / ENGINE / ENGINECFG / EXECUTION_PLAN: the graph
  std::vector<Config> results;        // ENGINEHEUR: the configurations, best first
  size_t workspace = 0;               // EXECUTION_PLAN
  std::shared_ptr<const int> alive;   // EXECUTION_PLAN: expires when it is destroyed
};

using bcos::emu::blas::store;

Backend* backend(cudnnBackendDescriptor_t d) { return static_cast<Backend*>(d); }

// Which attributes each kind takes: the type, the element counts allowed, whether finalization
// needs it, and (descriptors) the kind referred to (-1: any operation).
struct Spec {
  cudnnBackendDescriptorType_t owner;
  cudnnBackendAttributeName_t name;
  cudnnBackendAttributeType_t type;
  int64_t min, max;
  bool required;
  int refers_to = -2;  // -2: not a descriptor attribute
};
#define T(x) CUDNN_BACKEND_##x##_DESCRIPTOR
#define A(x) CUDNN_ATTR_##x
const Spec kSpecs[] = {
    {T(TENSOR), A(TENSOR_DATA_TYPE), CUDNN_TYPE_DATA_TYPE, 1, 1, true},
    {T(TENSOR), A(TENSOR_DIMENSIONS), CUDNN_TYPE_INT64, 1, CUDNN_DIM_MAX, true},
    {T(TENSOR), A(TENSOR_STRIDES), CUDNN_TYPE_INT64, 1, CUDNN_DIM_MAX, true},
    {T(TENSOR), A(TENSOR_UNIQUE_ID), CUDNN_TYPE_INT64, 1, 1, true},
    {T(TENSOR), A(TENSOR_BYTE_ALIGNMENT), CUDNN_TYPE_INT64, 1, 1, true},
    {T(CONVOLUTION), A(CONVOLUTION_COMP_TYPE), CUDNN_TYPE_DATA_TYPE, 1, 1, true},
    {T(CONVOLUTION), A(CONVOLUTION_CONV_MODE), CUDNN_TYPE_CONVOLUTION_MODE, 1, 1, true},
    {T(CONVOLUTION), A(CONVOLUTION_SPATIAL_DIMS), CUDNN_TYPE_INT64, 1, 1, true},
    {T(CONVOLUTION), A(CONVOLUTION_DILATIONS), CUDNN_TYPE_INT64, 1, 3, true},
    {T(CONVOLUTION), A(CONVOLUTION_FILTER_STRIDES), CUDNN_TYPE_INT64, 1, 3, true},
    {T(CONVOLUTION), A(CONVOLUTION_PRE_PADDINGS), CUDNN_TYPE_INT64, 1, 3, true},
    {T(CONVOLUTION), A(CONVOLUTION_POST_PADDINGS), CUDNN_TYPE_INT64, 1, 3, true},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_X), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_W), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_Y), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_CONV_DESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(CONVOLUTION)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_ALPHA), CUDNN_TYPE_FLOAT, 1, 1, false},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_BETA), CUDNN_TYPE_FLOAT, 1, 1, false},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_DX), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_W), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_DY), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(CONVOLUTION)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_ALPHA), CUDNN_TYPE_FLOAT, 1, 1, false},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_BETA), CUDNN_TYPE_FLOAT, 1, 1, false},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_X), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_DW), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_DY), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(CONVOLUTION)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_ALPHA), CUDNN_TYPE_FLOAT, 1, 1, false},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_BETA), CUDNN_TYPE_FLOAT, 1, 1, false},
    {T(OPERATIONGRAPH), A(OPERATIONGRAPH_HANDLE), CUDNN_TYPE_HANDLE, 1, 1, true},
    {T(OPERATIONGRAPH), A(OPERATIONGRAPH_OPS), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 64, true, -1},
    {T(ENGINEHEUR), A(ENGINEHEUR_OPERATION_GRAPH), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(OPERATIONGRAPH)},
    {T(ENGINEHEUR), A(ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, 1, 1, true},
    {T(EXECUTION_PLAN), A(EXECUTION_PLAN_HANDLE), CUDNN_TYPE_HANDLE, 1, 1, true},
    {T(EXECUTION_PLAN), A(EXECUTION_PLAN_ENGINE_CONFIG), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, 1, true, T(ENGINECFG)},
    {T(VARIANT_PACK), A(VARIANT_PACK_UNIQUE_IDS), CUDNN_TYPE_INT64, 0, 64, true},
    {T(VARIANT_PACK), A(VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR, 0, 64, true},
    {T(VARIANT_PACK), A(VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, 1, false},
};
#undef A

const Spec* spec_of(cudnnBackendDescriptorType_t owner, cudnnBackendAttributeName_t name) {
  for (const Spec& s : kSpecs)
    if (s.owner == owner && s.name == name) return &s;
  return nullptr;
}

size_t element_bytes(cudnnBackendAttributeType_t type) {
  switch (type) {
    case CUDNN_TYPE_INT64: return sizeof(int64_t);
    case CUDNN_TYPE_FLOAT: return sizeof(float);
    case CUDNN_TYPE_DOUBLE: return sizeof(double);
    case CUDNN_TYPE_VOID_PTR: return sizeof(void*);
    case CUDNN_TYPE_HANDLE: return sizeof(cudnnHandle_t);
    case CUDNN_TYPE_DATA_TYPE: return sizeof(cudnnDataType_t);
    case CUDNN_TYPE_CONVOLUTION_MODE: return sizeof(cudnnConvolutionMode_t);
    case CUDNN_TYPE_HEUR_MODE: return sizeof(cudnnBackendHeurMode_t);
    case CUDNN_TYPE_NUMERICAL_NOTE: return sizeof(cudnnBackendNumericalNote_t);
    default: return 0;
  }
}

bool is_operation(int kind) {
  return kind == T(OPERATION_CONVOLUTION_FORWARD) || kind == T(OPERATION_CONVOLUTION_BACKWARD_DATA) ||
         kind == T(OPERATION_CONVOLUTION_BACKWARD_FILTER);
}

const Attribute* find(const Backend& b, cudnnBackendAttributeName_t name) {
  auto it = b.attributes.find(name);
  return it == b.attributes.end() ? nullptr : &it->second;
}
template <class V>
V value(const Backend& b, cudnnBackendAttributeName_t name, int64_t i = 0) {
  V v{};
  std::memcpy(&v, find(b, name)->bytes.data() + size_t(i) * sizeof(V), sizeof(V));
  return v;
}
std::vector<int64_t> int64s(const Backend& b, cudnnBackendAttributeName_t name) {
  const Attribute* a = find(b, name);
  std::vector<int64_t> v(size_t(a->count));
  std::memcpy(v.data(), a->bytes.data(), v.size() * sizeof(int64_t));
  return v;
}

// The convolution one operation describes, as the legacy stand-in takes it.
struct Conv {
  int kind;
  Snapshot x, w, y, conv;  // x, w, y: forward's names (backward-data writes x, backward-filter w)
  double alpha = 1, beta = 0;
};
Conv conv_of(const Backend& op) {
  Conv c;
  c.kind = op.kind;
  auto tensor = [&](cudnnBackendAttributeName_t n) { return find(op, n)->descriptors[0]; };
  auto scalar = [&](cudnnBackendAttributeName_t n, double fallback) {
    const Attribute* a = find(op, n);
    if (!a) return fallback;
    return a->type == CUDNN_TYPE_DOUBLE ? value<double>(op, n) : double(value<float>(op, n));
  };
  if (op.kind == T(OPERATION_CONVOLUTION_FORWARD)) {
    c.x = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X), c.w = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W);
    c.y = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y);
    c.conv = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC);
    c.alpha = scalar(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, 1);
    c.beta = scalar(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, 0);
  } else if (op.kind == T(OPERATION_CONVOLUTION_BACKWARD_DATA)) {
    c.x = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX), c.w = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W);
    c.y = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY);
    c.conv = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC);
    c.alpha = scalar(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, 1);
    c.beta = scalar(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA, 0);
  } else {
    c.x = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X), c.w = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW);
    c.y = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY);
    c.conv = tensor(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC);
    c.alpha = scalar(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, 1);
    c.beta = scalar(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA, 0);
  }
  return c;
}
Conv conv_of_graph(const Backend& graph) { return conv_of(*find(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS)->descriptors[0]); }

// The operation's legacy descriptors (created and set here, destroyed with it), and its checks:
// 4-d dense NCHW tensors of one type, two spatial dims, groups read off the channels.
struct Legacy {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
  cudnnDataType_t type{};
  Legacy(const Conv& c, int64_t engine) {
    cudnnCreateTensorDescriptor(&x), cudnnCreateTensorDescriptor(&y);
    cudnnCreateFilterDescriptor(&w), cudnnCreateConvolutionDescriptor(&conv);
    type = value<cudnnDataType_t>(*c.x, CUDNN_ATTR_TENSOR_DATA_TYPE);
    std::vector<int64_t> d[3];
    const Snapshot* ts[3] = {&c.x, &c.w, &c.y};
    for (int i = 0; i < 3; ++i) {
      d[i] = int64s(**ts[i], CUDNN_ATTR_TENSOR_DIMENSIONS);
      const std::vector<int64_t> s = int64s(**ts[i], CUDNN_ATTR_TENSOR_STRIDES);
      if (d[i].size() != 4 || value<cudnnDataType_t>(**ts[i], CUDNN_ATTR_TENSOR_DATA_TYPE) != type) {
        status = CUDNN_STATUS_BAD_PARAM;
        return;
      }
      const std::vector<int64_t> dense{d[i][1] * d[i][2] * d[i][3], d[i][2] * d[i][3], d[i][3], 1};
      if (s != dense) status = CUDNN_STATUS_NOT_SUPPORTED;  // this stand-in computes dense NCHW only
    }
    const Backend& cv = *c.conv;
    if (value<int64_t>(cv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS) != 2) {
      status = CUDNN_STATUS_NOT_SUPPORTED;
      return;
    }
    const auto pre = int64s(cv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS), post = int64s(cv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS);
    const auto stride = int64s(cv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES), dil = int64s(cv, CUDNN_ATTR_CONVOLUTION_DILATIONS);
    if (pre.size() != 2 || post.size() != 2 || stride.size() != 2 || dil.size() != 2 || d[1][1] <= 0 ||
        d[0][1] % d[1][1] != 0) {
      status = CUDNN_STATUS_BAD_PARAM;
      return;
    }
    if (pre != post) status = CUDNN_STATUS_NOT_SUPPORTED;  // asymmetric padding: not in the legacy stand-in
    const cudnnMathType_t math = engine == kFast ? (type == CUDNN_DATA_FLOAT ? CUDNN_DEFAULT_MATH : CUDNN_TENSOR_OP_MATH)
                                                 : CUDNN_FMA_MATH;
    auto merge = [&](cudnnStatus_t s) {
      if (status == CUDNN_STATUS_SUCCESS) status = s;
    };
    merge(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, type, int(d[0][0]), int(d[0][1]), int(d[0][2]), int(d[0][3])));
    merge(cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW, int(d[1][0]), int(d[1][1]), int(d[1][2]), int(d[1][3])));
    merge(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, int(d[2][0]), int(d[2][1]), int(d[2][2]), int(d[2][3])));
    merge(cudnnSetConvolution2dDescriptor(conv, int(pre[0]), int(pre[1]), int(stride[0]), int(stride[1]), int(dil[0]),
                                          int(dil[1]), value<cudnnConvolutionMode_t>(cv, CUDNN_ATTR_CONVOLUTION_CONV_MODE),
                                          value<cudnnDataType_t>(cv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE)));
    merge(cudnnSetConvolutionGroupCount(conv, int(d[0][1] / d[1][1])));
    merge(cudnnSetConvolutionMathType(conv, math));
  }
  ~Legacy() {
    cudnnDestroyConvolutionDescriptor(conv), cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y), cudnnDestroyTensorDescriptor(x);
  }
  Legacy(const Legacy&) = delete;
  Legacy& operator=(const Legacy&) = delete;
};

// The engine's workspace (what the legacy stand-in asks for its algorithm), or its refusal.
cudnnStatus_t workspace_of(const Conv& c, int64_t engine, size_t* bytes) {
  *bytes = 0;
  if (engine == kDownConverting) return CUDNN_STATUS_SUCCESS;
  Legacy l(c, engine);
  if (l.status != CUDNN_STATUS_SUCCESS) return l.status;
  if (c.kind == T(OPERATION_CONVOLUTION_FORWARD))
    return cudnnGetConvolutionForwardWorkspaceSize(
        nullptr, l.x, l.w, l.conv, l.y,
        engine == kFast ? CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM : CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, bytes);
  if (c.kind == T(OPERATION_CONVOLUTION_BACKWARD_DATA))
    return cudnnGetConvolutionBackwardDataWorkspaceSize(
        nullptr, l.w, l.y, l.conv, l.x, engine == kFast ? CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 : CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        bytes);
  return cudnnGetConvolutionBackwardFilterWorkspaceSize(
      nullptr, l.x, l.y, l.conv, l.w, engine == kFast ? CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
      bytes);
}

std::vector<cudnnBackendNumericalNote_t> notes_of(const Backend& engine) {
  const Conv c = conv_of_graph(*engine.graph);
  const auto type = value<cudnnDataType_t>(*c.x, CUDNN_ATTR_TENSOR_DATA_TYPE);
  std::vector<cudnnBackendNumericalNote_t> notes;
  if (engine.engine == kDownConverting) notes.push_back(CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS);
  if (engine.engine == kFast) {
    if (type != CUDNN_DATA_DOUBLE) notes.push_back(CUDNN_NUMERICAL_NOTE_TENSOR_CORE);
    if (c.kind != T(OPERATION_CONVOLUTION_FORWARD)) notes.push_back(CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC);
  }
  return notes;
}

cudnnStatus_t finalize(Backend& b) {
  for (const Spec& s : kSpecs)
    if (s.owner == b.kind && s.required && !find(b, s.name)) return CUDNN_STATUS_BAD_PARAM;
  switch (b.kind) {
    case T(TENSOR): {
      const auto dims = int64s(b, CUDNN_ATTR_TENSOR_DIMENSIONS), strides = int64s(b, CUDNN_ATTR_TENSOR_STRIDES);
      const int64_t align = value<int64_t>(b, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT);
      if (dims.size() != strides.size() || align <= 0 || (align & (align - 1)) != 0) return CUDNN_STATUS_BAD_PARAM;
      for (size_t i = 0; i < dims.size(); ++i)
        if (dims[i] <= 0 || strides[i] <= 0) return CUDNN_STATUS_BAD_PARAM;
      break;
    }
    case T(CONVOLUTION): {
      const int64_t n = value<int64_t>(b, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS);
      for (auto name : {CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
                        CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS})
        if (find(b, name)->count != n) return CUDNN_STATUS_BAD_PARAM;
      break;
    }
    case T(OPERATIONGRAPH): {
      if (value<cudnnHandle_t>(b, CUDNN_ATTR_OPERATIONGRAPH_HANDLE) == nullptr) return CUDNN_STATUS_BAD_PARAM;
      if (find(b, CUDNN_ATTR_OPERATIONGRAPH_OPS)->count != 1) return CUDNN_STATUS_NOT_SUPPORTED;  // one convolution
      break;
    }
    case T(ENGINEHEUR): {
      b.graph = find(b, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH)->descriptors[0];
      const auto mode = value<cudnnBackendHeurMode_t>(b, CUDNN_ATTR_ENGINEHEUR_MODE);
      if (int(mode) < 0 || int(mode) >= int(CUDNN_HEUR_MODES_COUNT)) return CUDNN_STATUS_BAD_PARAM;
      const Config fast{kFast, {{CUDNN_KNOB_TYPE_TILE_SIZE, 1}}}, fast_other{kFast, {{CUDNN_KNOB_TYPE_TILE_SIZE, 2}}};
      b.results = !g_offer_engines.load()            ? std::vector<Config>{}
                  : mode == CUDNN_HEUR_MODE_FALLBACK ? std::vector<Config>{{kPlain, {}}, fast_other}
                                                     : std::vector<Config>{{kDownConverting, {}}, fast, {kPlain, {}}};
      break;
    }
    case T(EXECUTION_PLAN): {
      if (value<cudnnHandle_t>(b, CUDNN_ATTR_EXECUTION_PLAN_HANDLE) == nullptr) return CUDNN_STATUS_BAD_PARAM;
      const Backend& config = *find(b, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG)->descriptors[0];
      b.engine = config.engine, b.graph = config.graph;
      b.alive = std::make_shared<const int>(0);
      if (cudnnStatus_t s = workspace_of(conv_of_graph(*b.graph), b.engine, &b.workspace); s != CUDNN_STATUS_SUCCESS)
        return s;
      break;
    }
    case T(VARIANT_PACK):
      if (find(b, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS)->count != find(b, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS)->count)
        return CUDNN_STATUS_BAD_PARAM;
      break;
    default:
      if (is_operation(b.kind)) {
        size_t bytes = 0;  // the legacy stand-in's checks: the shapes must make a convolution
        if (cudnnStatus_t st = workspace_of(conv_of(b), kPlain, &bytes); st != CUDNN_STATUS_SUCCESS) return st;
        break;
      }
      return CUDNN_STATUS_BAD_PARAM;  // ENGINECFG / ENGINE are made by the library, not finalized by hand
  }
  b.finalized = true;
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t kind, cudnnBackendDescriptor_t* descriptor) {
  if (descriptor == nullptr) return CUDNN_STATUS_BAD_PARAM;
  auto* b = new Backend;
  b->kind = kind;
  *descriptor = b;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t descriptor) {
  delete backend(descriptor);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t count, const void* values) {
  if (descriptor == nullptr) return CUDNN_STATUS_BAD_PARAM;
  Backend& b = *backend(descriptor);
  const Spec* s = spec_of(b.kind, name);
  if (b.finalized || s == nullptr || count < s->min || count > s->max || (count > 0 && values == nullptr))
    return CUDNN_STATUS_BAD_PARAM;
  const bool scalar_kind = s->type == CUDNN_TYPE_FLOAT && (type == CUDNN_TYPE_FLOAT || type == CUDNN_TYPE_DOUBLE);
  if (type != s->type && !scalar_kind) return CUDNN_STATUS_BAD_PARAM;
  Attribute a;
  a.type = type, a.count = count;
  if (type == CUDNN_TYPE_BACKEND_DESCRIPTOR) {
    const auto* given = static_cast<const cudnnBackendDescriptor_t*>(values);
    for (int64_t i = 0; i < count; ++i) {
      const Backend* d = backend(given[i]);
      if (d == nullptr || !d->finalized) return CUDNN_STATUS_BAD_PARAM;
      if (s->refers_to == -1 ? !is_operation(d->kind) : int(d->kind) != s->refers_to) return CUDNN_STATUS_BAD_PARAM;
      a.descriptors.push_back(std::make_shared<const Backend>(*d));
    }
  } else {
    const auto* p = static_cast<const unsigned char*>(values);
    a.bytes.assign(p, p + size_t(count) * element_bytes(type));
  }
  b.attributes[name] = std::move(a);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t descriptor) {
  if (descriptor == nullptr || backend(descriptor)->finalized) return CUDNN_STATUS_BAD_PARAM;
  return finalize(*backend(descriptor));
}

cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t requested, int64_t* count,
                                       void* values) {
  if (descriptor == nullptr || count == nullptr || requested < 0) return CUDNN_STATUS_BAD_PARAM;
  const Backend& b = *backend(descriptor);
  if (!b.finalized) return CUDNN_STATUS_BAD_PARAM;
  if (requested > 0 && values == nullptr) return CUDNN_STATUS_BAD_PARAM;
  // Fills the caller's descriptors (created by it, of `kind`), one per item, with set(descriptor, item).
  auto fill = [&](cudnnBackendDescriptorType_t kind, const auto& items, auto set) {
    if (type != CUDNN_TYPE_BACKEND_DESCRIPTOR) return CUDNN_STATUS_BAD_PARAM;
    const int64_t n = std::min<int64_t>(requested, int64_t(items.size()));
    auto* out = static_cast<cudnnBackendDescriptor_t*>(values);
    for (int64_t i = 0; i < n; ++i) {
      Backend* d = backend(out[i]);
      if (d == nullptr || d->kind != kind) return CUDNN_STATUS_BAD_PARAM;
      set(*d, items[size_t(i)]);
      d->finalized = true;
    }
    *count = requested == 0 ? int64_t(items.size()) : n;
    return CUDNN_STATUS_SUCCESS;
  };
  if (b.kind == T(ENGINEHEUR) && name == CUDNN_ATTR_ENGINEHEUR_RESULTS)
    return fill(T(ENGINECFG), b.results, [&](Backend& d, const Config& c) {
      d.engine = c.engine, d.knobs = c.knobs, d.graph = b.graph;
    });
  if (b.kind == T(ENGINECFG) && name == CUDNN_ATTR_ENGINECFG_ENGINE)
    return fill(T(ENGINE), std::vector<int64_t>{b.engine}, [&](Backend& d, int64_t e) { d.engine = e, d.graph = b.graph; });
  if (b.kind == T(ENGINECFG) && name == CUDNN_ATTR_ENGINECFG_KNOB_CHOICES)
    return fill(T(KNOB_CHOICE), b.knobs, [](Backend& d, const Knob& k) { d.knobs = {k}; });
  if (b.kind == T(KNOB_CHOICE) && (name == CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE || name == CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE)) {
    const bool is_type = name == CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE;
    if (type != (is_type ? CUDNN_TYPE_KNOB_TYPE : CUDNN_TYPE_INT64) || requested < 1 || b.knobs.size() != 1)
      return CUDNN_STATUS_BAD_PARAM;
    if (is_type)
      *static_cast<cudnnBackendKnobType_t*>(values) = b.knobs[0].type;
    else
      *static_cast<int64_t*>(values) = b.knobs[0].value;
    *count = 1;
    return CUDNN_STATUS_SUCCESS;
  }
  if (b.kind == T(ENGINE) && name == CUDNN_ATTR_ENGINE_GLOBAL_INDEX) {
    if (type != CUDNN_TYPE_INT64 || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    *static_cast<int64_t*>(values) = b.engine, *count = 1;
    return CUDNN_STATUS_SUCCESS;
  }
  if (b.kind == T(ENGINE) && name == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE) {
    if (type != CUDNN_TYPE_NUMERICAL_NOTE) return CUDNN_STATUS_BAD_PARAM;
    const auto notes = notes_of(b);
    const int64_t n = std::min<int64_t>(requested, int64_t(notes.size()));
    if (n > 0) std::memcpy(values, notes.data(), size_t(n) * sizeof(notes[0]));  // (a count query passes null)
    *count = requested == 0 ? int64_t(notes.size()) : n;
    return CUDNN_STATUS_SUCCESS;
  }
  if (b.kind == T(EXECUTION_PLAN) && name == CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE) {
    if (type != CUDNN_TYPE_INT64 || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    *static_cast<int64_t*>(values) = int64_t(b.workspace), *count = 1;
    return CUDNN_STATUS_SUCCESS;
  }
  return CUDNN_STATUS_NOT_SUPPORTED;  // nothing else is read by the backend
}

cudnnStatus_t cudnnBackendExecute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan_d, cudnnBackendDescriptor_t pack_d) {
  if (handle == nullptr || plan_d == nullptr || pack_d == nullptr) return CUDNN_STATUS_BAD_PARAM;
  const Backend &plan = *backend(plan_d), &pack = *backend(pack_d);
  if (plan.kind != T(EXECUTION_PLAN) || pack.kind != T(VARIANT_PACK) || !plan.finalized || !pack.finalized)
    return CUDNN_STATUS_BAD_PARAM;
  const Conv c = conv_of_graph(*plan.graph);
  // Each tensor's pointer, by its unique id; at least as aligned as the tensor said.
  const std::vector<int64_t> uids = int64s(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS);
  void* pointers[3] = {nullptr, nullptr, nullptr};
  const Snapshot* tensors[3] = {&c.x, &c.w, &c.y};
  for (int t = 0; t < 3; ++t) {
    const int64_t uid = value<int64_t>(**tensors[t], CUDNN_ATTR_TENSOR_UNIQUE_ID);
    const int64_t align = value<int64_t>(**tensors[t], CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT);
    for (size_t i = 0; i < uids.size(); ++i)
      if (uids[i] == uid) pointers[t] = value<void*>(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, int64_t(i));
    if (pointers[t] == nullptr || reinterpret_cast<uintptr_t>(pointers[t]) % uintptr_t(align) != 0)
      return CUDNN_STATUS_BAD_PARAM;
  }
  void* ws = find(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE) ? value<void*>(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE) : nullptr;
  if (plan.workspace > 0 && ws == nullptr) return CUDNN_STATUS_BAD_PARAM;
  cudaStream_t stream = nullptr;
  cudnnGetStream(handle, &stream);
  // Captured into a CUDA graph, an execution runs again at each replay: its plan must still exist
  // then (an engine's runtime-compiled kernels may go with it; cuDNN promises nothing else), so a
  // replay after the plan was destroyed fails here.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture == cudaStreamCaptureStatusActive)
    bcos::emu::runtime::enqueue(stream, "cudnnBackendExecute (its plan)", [alive = std::weak_ptr<const int>(plan.alive)] {
      if (alive.expired())
        throw std::runtime_error("cudnnBackendExecute in a CUDA graph replay: its execution plan has been destroyed");
    });
  if (plan.engine == kDownConverting) {  // its inputs rounded to half: here, NaN everywhere it writes
    // What the operation writes: y forward (tensor 2), x backward-data (0), w backward-filter (1).
    const int written = c.kind == T(OPERATION_CONVOLUTION_FORWARD) ? 2 : c.kind == T(OPERATION_CONVOLUTION_BACKWARD_DATA) ? 0 : 1;
    const Snapshot& out = *tensors[written];
    int64_t numel = 1;
    for (int64_t d : int64s(*out, CUDNN_ATTR_TENSOR_DIMENSIONS)) numel *= d;
    const auto type = value<cudnnDataType_t>(*out, CUDNN_ATTR_TENSOR_DATA_TYPE);
    const cudaDataType t = type == CUDNN_DATA_DOUBLE ? CUDA_R_64F : type == CUDNN_DATA_FLOAT ? CUDA_R_32F
                           : type == CUDNN_DATA_HALF ? CUDA_R_16F : CUDA_R_16BF;
    void* p = pointers[written];
    bcos::emu::runtime::enqueue(stream, "cudnnBackendExecute (down-converting engine)", [=] {
      for (int64_t i = 0; i < numel; ++i) store(p, t, i, std::nan(""));
    });
    return CUDNN_STATUS_SUCCESS;
  }
  Legacy l(c, plan.engine);
  if (l.status != CUDNN_STATUS_SUCCESS) return l.status;
  const bool fast = plan.engine == kFast;
  // alpha / beta as the legacy calls read them: double for double data, float otherwise.
  const double ad = c.alpha, bd = c.beta;
  const float af = float(c.alpha), bf = float(c.beta);
  const void* alpha = l.type == CUDNN_DATA_DOUBLE ? static_cast<const void*>(&ad) : &af;
  const void* beta = l.type == CUDNN_DATA_DOUBLE ? static_cast<const void*>(&bd) : &bf;
  if (c.kind == T(OPERATION_CONVOLUTION_FORWARD))
    return cudnnConvolutionForward(
        handle, alpha, l.x, pointers[0], l.w, pointers[1], l.conv,
        fast ? CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM : CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, ws,
        plan.workspace, beta, l.y, pointers[2]);
  if (c.kind == T(OPERATION_CONVOLUTION_BACKWARD_DATA))
    return cudnnConvolutionBackwardData(handle, alpha, l.w, pointers[1], l.y, pointers[2], l.conv,
                                        fast ? CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 : CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                                        ws, plan.workspace, beta, l.x, pointers[0]);
  return cudnnConvolutionBackwardFilter(handle, alpha, l.x, pointers[0], l.y, pointers[2], l.conv,
                                        fast ? CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                                        ws, plan.workspace, beta, l.w, pointers[1]);
}

namespace bcos::emu::runtime {
void set_cudnn_graph_engines(bool offered) { g_offer_engines = offered; }
}  // namespace bcos::emu::runtime
#undef T
