// 2-D convolutions through cuDNN's graph API (the "backend" descriptors of cudnn_graph.h): one
// convolution operation per graph, the engine configurations cuDNN's heuristics rank for it
// (mode INSTANT, then its FALLBACK list), filtered as PyTorch filters them, and an execution plan
// kept per shape. This is how PyTorch's convolutions reach cuDNN; conv.cu's legacy descriptor API
// only offers cuDNN 7's algorithm enums. Chosen by set_cudnn_graph_api (tensor/device.h); any
// failure to build a graph declines the call and conv.cu takes the legacy path.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tensor/cuda/cudnn_common.h"

// The graph's and the plan's HANDLE attributes are marked deprecated in cuDNN 9 (in favour of
// device-property descriptors); they are still what every 9.x release takes.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#pragma nv_diag_suppress 1444

namespace bcos::cuda {
namespace cudnn {

namespace {

// The three tensors' unique ids, in the graph and in each call's variant pack.
constexpr int64_t kX = 'x', kW = 'w', kY = 'y';

// A failed step while building a graph or plan: convolve() declines the call with it.
struct Declined {
  std::string why;
};

void need(cudnnStatus_t status, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS)
    throw Declined{str(what, " failed with ", cudnnGetErrorString(status), " (status ", int(status), ")")};
}

// A backend descriptor, destroyed with it.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) {
    need(cudnnBackendCreateDescriptor(type, &h_), "cudnnBackendCreateDescriptor");
  }
  ~Descriptor() {
    if (h_) cudnnBackendDestroyDescriptor(h_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  cudnnBackendDescriptor_t get() const { return h_; }
  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* values) {
    need(cudnnBackendSetAttribute(h_, name, type, count, values), "cudnnBackendSetAttribute");
  }
  void set(cudnnBackendAttributeName_t name, const std::vector<int64_t>& values) {
    set(name, CUDNN_TYPE_INT64, int64_t(values.size()), values.data());
  }
  void set(cudnnBackendAttributeName_t name, const Descriptor& d) {
    cudnnBackendDescriptor_t h = d.get();
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &h);
  }
  void finalize(const char* what) { need(cudnnBackendFinalize(h_), what); }

 private:
  cudnnBackendDescriptor_t h_ = nullptr;
};
using Owned = std::shared_ptr<Descriptor>;

// The largest power of two up to 16 dividing p's address: the tensor's BYTE_ALIGNMENT, as PyTorch
// states it (a plan built for 16-byte pointers may use vector loads a view inside an allocation
// cannot serve, so the alignment is part of the cache key).
int64_t alignment_of(const void* p) {
  int64_t align = 16;
  while (align > 1 && reinterpret_cast<uintptr_t>(p) % uintptr_t(align) != 0) align /= 2;
  return align;
}

// A dense [d0, d1, d2, d3] tensor of `type`.
Owned tensor(int64_t uid, const Shape& s, cudnnDataType_t type, int64_t align) {
  auto t = std::make_shared<Descriptor>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  t->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
  t->set(CUDNN_ATTR_TENSOR_DIMENSIONS, {s[0], s[1], s[2], s[3]});
  t->set(CUDNN_ATTR_TENSOR_STRIDES, {s[1] * s[2] * s[3], s[2] * s[3], s[3], 1});
  t->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, {uid});
  t->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, {align});
  t->finalize("cudnnBackendFinalize (tensor)");
  return t;
}

// Everything one plan was built from (the descriptors it refers to stay alive with it).
struct Plan {
  std::vector<Owned> parts;
  Owned plan;
  int64_t workspace = 0, engine = -1;
};

// The operation graph of one convolution direction, and the descriptors it is made of.
struct Graph {
  std::vector<Owned> parts;
  Owned graph;
};

Graph build_graph(Direction direction, cudnnHandle_t handle, const Tensor& x, const Tensor& w, const Tensor& y,
                  const Conv2dParams& p, DType dt, const char* op) {
  Graph g;
  const cudnnDataType_t type = data_type(dt, op), compute = compute_type(dt, op);
  Owned tx = tensor(kX, x.shape(), type, alignment_of(x.raw_data()));
  Owned tw = tensor(kW, w.shape(), type, alignment_of(w.raw_data()));
  Owned ty = tensor(kY, y.shape(), type, alignment_of(y.raw_data()));
  // The group count is not an attribute: cuDNN reads it off x's channels over w's.
  auto conv = std::make_shared<Descriptor>(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  conv->set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
  conv->set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  conv->set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, {2});
  conv->set(CUDNN_ATTR_CONVOLUTION_DILATIONS, {p.dilation[0], p.dilation[1]});
  conv->set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, {p.stride[0], p.stride[1]});
  conv->set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, {p.padding[0], p.padding[1]});
  conv->set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, {p.padding[0], p.padding[1]});
  conv->finalize("cudnnBackendFinalize (convolution)");

  struct Names {
    cudnnBackendDescriptorType_t kind;
    cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
  };
  const Names n = direction == Direction::forward
                      ? Names{CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA}
                  : direction == Direction::backward_data
                      ? Names{CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA}
                      : Names{CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
                              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
  auto operation = std::make_shared<Descriptor>(n.kind);
  operation->set(n.x, *tx);
  operation->set(n.w, *tw);
  operation->set(n.y, *ty);
  operation->set(n.conv, *conv);
  // alpha = 1, beta = 0 (y is written, not blended): double for float64 data, float otherwise.
  const double one = 1, zero = 0;
  const float one_f = 1, zero_f = 0;
  if (dt == DType::f64) {
    operation->set(n.alpha, CUDNN_TYPE_DOUBLE, 1, &one);
    operation->set(n.beta, CUDNN_TYPE_DOUBLE, 1, &zero);
  } else {
    operation->set(n.alpha, CUDNN_TYPE_FLOAT, 1, &one_f);
    operation->set(n.beta, CUDNN_TYPE_FLOAT, 1, &zero_f);
  }
  operation->finalize("cudnnBackendFinalize (convolution operation)");

  g.graph = std::make_shared<Descriptor>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  g.graph->set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  g.graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, *operation);
  g.graph->finalize("cudnnBackendFinalize (operation graph)");
  g.parts = {tx, tw, ty, conv, operation};
  return g;
}

// The engine configurations the heuristics rank for the graph in `mode`, best first.
std::vector<Owned> engine_configs(const Descriptor& graph, cudnnBackendHeurMode_t mode) {
  Descriptor heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  heuristics.finalize("cudnnBackendFinalize (heuristics)");
  int64_t count = 0;
  need(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                &count, nullptr),
       "cudnnBackendGetAttribute (heuristics' count)");
  // The results are copied into descriptors the caller creates.
  std::vector<Owned> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    configs.push_back(std::make_shared<Descriptor>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    raw.push_back(configs.back()->get());
  }
  int64_t got = 0;
  if (count > 0)
    need(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                  count, &got, raw.data()),
         "cudnnBackendGetAttribute (heuristics' results)");
  configs.resize(size_t(std::clamp<int64_t>(got, 0, count)));
  return configs;
}

// What an engine configuration's engine says of itself, and the configuration's knob settings.
struct EngineNotes {
  int64_t index = -1;
  std::vector<cudnnBackendNumericalNote_t> numerical;
  // The engine's index, then each knob's (type, value): the same for two configurations that are
  // the same (INSTANT's and FALLBACK's lists overlap), as PyTorch's plan tags. Empty when the
  // knobs could not be read: such a configuration is never taken for another.
  std::vector<int64_t> tag;
  bool has(cudnnBackendNumericalNote_t note) const {
    return std::find(numerical.begin(), numerical.end(), note) != numerical.end();
  }
};

std::vector<int64_t> knob_tag(const Descriptor& config, int64_t engine) {
  try {
    int64_t count = 0;  // (asked first, as the heuristics' results are)
    need(cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                  &count, nullptr),
         "cudnnBackendGetAttribute (knob choices' count)");
    std::vector<Owned> choices;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < std::clamp<int64_t>(count, 0, CUDNN_KNOB_TYPE_COUNTS); ++i) {
      choices.push_back(std::make_shared<Descriptor>(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
      raw.push_back(choices.back()->get());
    }
    int64_t got = 0;
    if (!raw.empty())
      need(cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                    int64_t(raw.size()), &got, raw.data()),
           "cudnnBackendGetAttribute (knob choices)");
    std::vector<std::pair<int64_t, int64_t>> knobs;
    for (int64_t i = 0; i < std::clamp<int64_t>(got, 0, int64_t(raw.size())); ++i) {
      cudnnBackendKnobType_t type{};
      int64_t value = 0, one = 0;
      need(cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &one,
                                    &type),
           "cudnnBackendGetAttribute (knob type)");
      need(cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &one,
                                    &value),
           "cudnnBackendGetAttribute (knob value)");
      knobs.emplace_back(int64_t(type), value);
    }
    std::sort(knobs.begin(), knobs.end());
    std::vector<int64_t> tag{engine};
    for (const auto& [type, value] : knobs) tag.insert(tag.end(), {type, value});
    return tag;
  } catch (const Declined&) {
    return {};
  }
}

EngineNotes notes_of(const Descriptor& config) {
  Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t e = engine.get();
  int64_t count = 0;
  need(cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count,
                                &e),
       "cudnnBackendGetAttribute (engine of a configuration)");
  EngineNotes notes;
  need(cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count, &notes.index),
       "cudnnBackendGetAttribute (engine index)");
  notes.numerical.resize(CUDNN_NUMERICAL_NOTE_TYPE_COUNT);
  need(cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes.numerical.data()),
       "cudnnBackendGetAttribute (engine notes)");
  notes.numerical.resize(size_t(std::clamp<int64_t>(count, 0, CUDNN_NUMERICAL_NOTE_TYPE_COUNT)));
  notes.tag = knob_tag(config, notes.index);
  return notes;
}

// PyTorch's filter: no nondeterministic engine under deterministic_algorithms(), none that
// down-converts its inputs (float32 computed in half), and for float32 with TF32 off none that
// uses tensor cores.
bool usable(const EngineNotes& notes, DType dt) {
  if (deterministic_algorithms() && notes.has(CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC)) return false;
  if (notes.has(CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)) return false;
  if (dt == DType::f32 && !allow_tf32() && notes.has(CUDNN_NUMERICAL_NOTE_TENSOR_CORE)) return false;
  return true;
}

// An execution plan for one configuration; null, with the reason in `why`, when cuDNN turns it
// down (gives_way) at finalization.
std::shared_ptr<Plan> plan_for(cudnnHandle_t handle, const Graph& g, const Owned& config, int64_t engine,
                               std::string& why) {
  auto plan = std::make_shared<Plan>();
  plan->plan = std::make_shared<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
  plan->plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  plan->plan->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, *config);
  const cudnnStatus_t status = cudnnBackendFinalize(plan->plan->get());
  if (gives_way(status)) {
    why += str("; engine ", engine, ": ", cudnnGetErrorString(status));
    return nullptr;
  }
  need(status, "cudnnBackendFinalize (execution plan)");
  int64_t count = 0;
  need(cudnnBackendGetAttribute(plan->plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                &count, &plan->workspace),
       "cudnnBackendGetAttribute (workspace size)");
  plan->parts = g.parts;
  plan->parts.push_back(g.graph);
  plan->parts.push_back(config);
  plan->engine = engine;
  return plan;
}

// Runs a plan on x, w, y: its status (a workspace the device cannot hold gives way, as
// NOT_SUPPORTED). `timing`, when given, brackets the execution on the device's stream.
cudnnStatus_t execute(cudnnHandle_t handle, int device, const Plan& plan, const Tensor& x, const Tensor& w,
                      const Tensor& y, TimedRun* timing = nullptr) {
  std::shared_ptr<void> ws;
  try {
    if (plan.workspace > 0) ws = allocate(size_t(plan.workspace), device);
  } catch (const OutOfMemoryError&) {
    return CUDNN_STATUS_NOT_SUPPORTED;
  }
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  void* pointers[3] = {x.raw_data(), w.raw_data(), y.raw_data()};
  void* workspace = ws.get();
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, {kX, kW, kY});
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers);
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize("cudnnBackendFinalize (variant pack)");
  if (timing) record_event(device, timing->start, stream_of(device));
  const cudnnStatus_t status = cudnnBackendExecute(handle, plan.plan->get(), pack.get());
  if (timing) record_event(device, timing->end, stream_of(device));
  return status;  // the workspace goes back to the stream's pool, reused only by later work on it
}

// Kept plans per (device, direction, shapes, parameters, type, numerics switches, alignments,
// timed), a cache per thread, as PyTorch keeps them: a plan is finalized with one thread's handle,
// and cuDNN does not promise that every engine's plan may run on another handle, or on two threads
// at once (nor that one thread may destroy what another's handle made). Never destroyed at exit
// (as PyTorch's cache, since cuDNN 9.10): cuDNN may be gone before a destructor at exit would
// destroy its plans. At most cache_limit() entries in each (a declined shape is one too), the
// least recently used dropped first, as PyTorch's LRU cache of plans; a plan a CUDA graph
// captured lives on with that graph (keep_with_capture).
using Key = std::vector<int64_t>;
struct PlanCache {
  struct Entry {
    std::shared_ptr<Plan> plan;  // null: declined
    std::list<Key>::iterator recent;
  };
  std::map<Key, Entry> entries;
  std::list<Key> recent;  // most recently used first

  const Entry* find(const Key& key) {
    auto it = entries.find(key);
    if (it == entries.end()) return nullptr;
    recent.splice(recent.begin(), recent, it->second.recent);
    return &it->second;
  }
  // Returns what fell out (destroyed when the caller lets go, unless a CUDA graph holds it).
  std::vector<std::shared_ptr<Plan>> put(const Key& key, std::shared_ptr<Plan> plan, int64_t limit) {
    std::vector<std::shared_ptr<Plan>> dropped;
    if (limit < 0) return dropped;  // nothing kept
    if (auto it = entries.find(key); it != entries.end()) {
      dropped.push_back(std::exchange(it->second.plan, std::move(plan)));
      recent.splice(recent.begin(), recent, it->second.recent);
      return dropped;
    }
    recent.push_front(key);
    entries[key] = {std::move(plan), recent.begin()};
    trim(limit, dropped);
    return dropped;
  }
  // The least recently used entries beyond `limit` (0: none; negative: all) go into `dropped`.
  void trim(int64_t limit, std::vector<std::shared_ptr<Plan>>& dropped) {
    while (limit != 0 && !recent.empty() && (limit < 0 || int64_t(entries.size()) > limit)) {
      auto last = entries.find(recent.back());
      dropped.push_back(std::move(last->second.plan));
      entries.erase(last);
      recent.pop_back();
    }
  }
};
PlanCache& plans() {
  thread_local PlanCache* cache = new PlanCache;  // (left to the process's end, as said above)
  return *cache;
}

// BCOS_CUDNN_PLAN_CACHE_LIMIT, as PyTorch's TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT: 10,000 plans by
// default (~2 GiB at ~200 KiB a plan, PyTorch's estimate), 0 for no bound, negative for none kept.
constexpr int64_t kUnread = INT64_MIN;
std::atomic<int64_t> g_limit{kUnread};
int64_t cache_limit() {
  int64_t limit = g_limit.load(std::memory_order_relaxed);
  if (limit != kUnread) return limit;
  limit = 10000;
  if (const char* v = std::getenv("BCOS_CUDNN_PLAN_CACHE_LIMIT"); v != nullptr && *v != '\0') {
    char* end = nullptr;
    errno = 0;
    const long long parsed = std::strtoll(v, &end, 10);
    if (*end == '\0' && errno == 0)
      limit = parsed;
    else
      std::fprintf(stderr, "bcos: BCOS_CUDNN_PLAN_CACHE_LIMIT=%s is not an integer; keeping %lld plans\n", v,
                   static_cast<long long>(limit));
  }
  int64_t unread = kUnread;
  g_limit.compare_exchange_strong(unread, limit, std::memory_order_relaxed);  // a set meanwhile wins
  return g_limit.load(std::memory_order_relaxed);
}

void keep(const Key& key, std::shared_ptr<Plan> plan) {
  plans().put(key, std::move(plan), cache_limit());  // (what falls out is destroyed unless a graph holds it)
}

std::atomic<int64_t> g_built{0}, g_declined{0};
std::mutex g_mutex;  // g_last_declined's
std::string g_last_declined;

std::vector<int64_t> key_of(Direction direction, int device, const Tensor& x, const Tensor& w, const Tensor& y,
                            const Conv2dParams& p, bool timed) {
  std::vector<int64_t> key{timed, device, int64_t(direction), int64_t(x.dtype()), allow_tf32(),
                           deterministic_algorithms()};  // (timed first: convolve flips it)
  for (const Tensor* t : {&x, &w, &y}) {
    key.insert(key.end(), t->shape().begin(), t->shape().end());
    key.push_back(alignment_of(t->raw_data()));
  }
  key.insert(key.end(), {p.stride[0], p.stride[1], p.padding[0], p.padding[1], p.dilation[0], p.dilation[1]});
  return key;
}

}  // namespace

bool convolve(Direction direction, int device, const Tensor& x, const Tensor& w, const Tensor& y,
              const Conv2dParams& p, const char* op) {
  const DType dt = x.dtype();
  // Not inside a CUDA graph capture, whose events cannot be waited for: the heuristics' choice there.
  const bool timed = cudnn_benchmark() && !capturing();
  const std::vector<int64_t> key = key_of(direction, device, x, w, y, p, timed);
  // A timed choice serves an untimed call too: a capture after a warm-up in benchmark mode then
  // replays the engine the warm-up chose, and builds no plan inside the capture.
  std::vector<int64_t> timed_key = key;
  timed_key[0] = 1;
  cudnnHandle_t h = handle(device);
  auto raise = [&](cudnnStatus_t status, int64_t engine) {
    fail(op, " (x ", x.shape(), ", w ", w.shape(), ", y ", y.shape(), ", ", dtype_name(dt),
         "): cudnnBackendExecute (engine ", engine, ") failed with ", cudnnGetErrorString(status), " (status ",
         int(status), ")");
  };
  std::shared_ptr<Plan> kept;
  const PlanCache::Entry* found = plans().find(timed_key);
  if (found == nullptr) found = plans().find(key);
  if (found != nullptr) {
    if (!found->plan) return false;  // declined before: the legacy path, without asking again
    kept = found->plan;
  }
  // A plan captured into a CUDA graph is held by the graph: the cache may drop it meanwhile.
  auto done = [&](const std::shared_ptr<Plan>& plan) {
    if (capturing()) keep_with_capture(plan);
    return true;
  };
  if (kept) {
    const cudnnStatus_t status = execute(h, device, *kept, x, w, y);
    if (status == CUDNN_STATUS_SUCCESS) return done(kept);
    if (!gives_way(status)) raise(status, kept->engine);  // else: search again (a fuller device, ...)
  }
  std::string why;
  try {
    const Graph g = build_graph(direction, h, x, w, y, p, dt, op);
    std::vector<Owned> configs;
    for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_INSTANT, CUDNN_HEUR_MODE_FALLBACK}) {
      try {
        for (Owned& c : engine_configs(*g.graph, mode)) configs.push_back(std::move(c));
      } catch (const Declined& d) {  // one mode answering nothing is not the end
        why += str("; heuristics mode ", int(mode), ": ", d.why);
      }
    }
    // Each usable configuration in order: the first that runs is kept, or (timed) each that runs
    // is run once more between events and the fastest kept -- run again unless it ran last.
    struct Ran {
      std::shared_ptr<Plan> plan;
      std::unique_ptr<TimedRun> timing;
    };
    std::vector<Ran> ran;
    std::set<std::vector<int64_t>> tried;  // each configuration once, though both lists name it
    for (const Owned& config : configs) {
      EngineNotes notes;
      std::shared_ptr<Plan> plan;
      cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
      try {  // a configuration that cannot be read or planned gives way to the next
        notes = notes_of(*config);
        if (!notes.tag.empty() && !tried.insert(notes.tag).second) continue;
        if (!usable(notes, dt)) continue;
        plan = plan_for(h, g, config, notes.index, why);
        if (!plan) continue;
        status = execute(h, device, *plan, x, w, y);
      } catch (const Declined& d) {
        why += str("; engine ", notes.index, ": ", d.why);
        continue;
      }
      // While searching, any engine that fails gives way (as PyTorch's try_plans): cuDNN 9's
      // engines may fail with bad-parameter or internal sub-codes (a device allocation, say)
      // where another engine runs. A kept plan failing later is raised (above).
      if (status != CUDNN_STATUS_SUCCESS) {
        why += str("; engine ", notes.index, ": ", cudnnGetErrorString(status));
        if (!gives_way(status)) cudaGetLastError();  // (a launch error the engine left behind)
        continue;
      }
      g_built.fetch_add(1);
      if (!timed) {
        keep(key, plan);
        return done(plan);
      }
      auto timing = std::make_unique<TimedRun>(device);
      const bool timed_ok = execute(h, device, *plan, x, w, y, timing.get()) == CUDNN_STATUS_SUCCESS;
      ran.push_back({plan, timed_ok ? std::move(timing) : nullptr});
    }
    if (!ran.empty()) {
      size_t best = 0;
      float best_ms = INFINITY;
      for (size_t i = 0; i < ran.size(); ++i) {
        const float ms = ran[i].timing ? ran[i].timing->elapsed_ms() : INFINITY;
        if (ms < best_ms) best_ms = ms, best = i;
      }
      if (best + 1 != ran.size() || !ran[best].timing) {  // y holds the last one's result
        const cudnnStatus_t status = execute(h, device, *ran[best].plan, x, w, y);
        if (status != CUDNN_STATUS_SUCCESS) raise(status, ran[best].plan->engine);
      }
      keep(key, ran[best].plan);
      return true;
    }
    why = str(configs.empty() ? "the heuristics offer no engine" : "no engine runs it", why);
  } catch (const Declined& d) {
    why = d.why + why;
  }
  g_declined.fetch_add(1);
  keep(key, nullptr);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_last_declined = str(op, " (x ", x.shape(), ", w ", w.shape(), ", y ", y.shape(), ", ", dtype_name(dt), "): ", why);
  return false;
}

}  // namespace cudnn

int64_t conv_graph_plans_built() { return cudnn::g_built.load(); }
int64_t conv_graph_declined() { return cudnn::g_declined.load(); }
int64_t conv_graph_plans_kept() { return int64_t(cudnn::plans().entries.size()); }
void set_conv_graph_cache_limit(int64_t limit) {
  cudnn::g_limit.store(limit == cudnn::kUnread ? limit + 1 : limit, std::memory_order_relaxed);
  std::vector<std::shared_ptr<cudnn::Plan>> dropped;
  cudnn::plans().trim(limit, dropped);  // (other threads' caches at their next plan)
}
int64_t conv_graph_cache_limit() { return cudnn::cache_limit(); }
std::string conv_graph_last_declined() {
  std::lock_guard<std::mutex> lock(cudnn::g_mutex);
  return cudnn::g_last_declined;
}

}  // namespace bcos::cuda
