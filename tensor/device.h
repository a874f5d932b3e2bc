// Where a tensor's bytes live: the CPU, or CUDA device N. Mixing devices in one op is an
// error, never an implicit copy.
#pragma once

#include <cstddef>
#include <ostream>
#include <string>

#include "tensor/error.h"

namespace bcos {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  Device() = default;
  Device(DeviceType t, int i = 0) : type(t), index(i) {}
  // "cpu", "cuda", "cuda:1"
  Device(const char* spec) : Device(parse(spec)) {}
  Device(const std::string& spec) : Device(parse(spec)) {}

  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }

  std::string name() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && (a.is_cpu() || a.index == b.index);
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.name(); }

  static Device parse(const std::string& s) {
    if (s == "cpu") return cpu();
    if (s == "cuda") return cuda(0);
    if (s.rfind("cuda:", 0) == 0 && s.size() > 5 &&
        s.find_first_not_of("0123456789", 5) == std::string::npos)
      return cuda(std::stoi(s.substr(5)));
    fail("Device: cannot parse '", s, "' (expected cpu, cuda or cuda:N)");
  }
};

// True when the library was compiled with its CUDA backend.
bool cuda_compiled();
// Number of visible CUDA devices (0 without a GPU or without the CUDA backend).
int cuda_device_count();

// Waits until all queued work on `d` has finished (nothing to wait for on the CPU). On a GPU an
// index out of range is found by the kernel that reads it and raised here, or by the next copy
// to the host, whichever comes first (PyTorch's device-side asserts, without losing the device).
void synchronize(Device d);
// The most memory tensors on `d` have held at once since the start, in bytes (0 on the CPU: use
// the process's peak resident memory there).
size_t peak_memory_bytes(Device d);
// Starts that peak again from the memory in use now (torch.cuda.reset_peak_memory_stats; nothing
// on the CPU).
void reset_peak_memory(Device d);

// ---- GPU numerics: process-wide switches (the CPU kernels are deterministic either way) ------
// TF32 tensor cores for float32 matrix products and convolutions (about 10 mantissa bits per
// input, float32 accumulation). On by default, as PyTorch's default for cuDNN convolutions.
void set_allow_tf32(bool allow);
bool allow_tf32();
// Exact float32 products (TF32 off) while in scope, the setting before restored after: for checks
// of identities (a converted model's equal logits, contributions summing to a logit) that TF32's
// 10-bit inputs would blur to ~1e-3, hiding a real 1e-4 error.
class ExactFloat32Guard {
 public:
  ExactFloat32Guard() : was_(allow_tf32()) { set_allow_tf32(false); }
  ~ExactFloat32Guard() { set_allow_tf32(was_); }
  ExactFloat32Guard(const ExactFloat32Guard&) = delete;
  ExactFloat32Guard& operator=(const ExactFloat32Guard&) = delete;

 private:
  bool was_;
};
// Deterministic algorithms: cuDNN convolutions restricted to its deterministic algorithms, and
// the backward scatters (index_add, scatter_add) add each destination's terms in a fixed order
// instead of with atomics in arrival order -- bit-identical results from run to run, at some cost
// in speed. (The B-cos kernels' and the pooling backwards gather, deterministic either way.) Off
// by default (as PyTorch).
void set_deterministic_algorithms(bool on);
bool deterministic_algorithms();
// cuDNN autotuning, as torch.backends.cudnn.benchmark: the first time a convolution's shape is
// seen (per direction and device), every algorithm cuDNN's heuristics list for it is run and
// timed on the GPU, and the fastest is kept for that shape; off, the heuristics' first entry that
// runs is kept. Pays where shapes repeat (training at a fixed batch size): each new shape costs
// two runs of every candidate. With deterministic_algorithms() too, each choice is deterministic,
// but which one wins depends on the timings: bits may differ between processes (as in PyTorch).
// Off by default (as PyTorch).
void set_cudnn_benchmark(bool on);
bool cudnn_benchmark();
// Which of cuDNN's APIs runs the convolutions: its graph API (true: the engines its heuristics
// rank, filtered as PyTorch filters them -- how PyTorch calls cuDNN) or the legacy descriptor
// API with cuDNN 7's algorithms (false). A shape the graph API declines takes the legacy one.
// Default: the legacy API, or the graph API when the environment has BCOS_CUDNN_API=graph.
void set_cudnn_graph_api(bool on);
bool cudnn_graph_api();

}  // namespace bcos
