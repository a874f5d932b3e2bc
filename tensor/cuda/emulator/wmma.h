// The CUDA emulator's warp matrix functions (nvcuda::wmma, CUDA's <mma.h>, which declares nothing
// for a host compiler): the shapes tensor/cuda/attention.cu uses, TF32 m16n16k8 and bf16
// m16n16k16, with float accumulators. The hardware spreads a fragment over the warp's lanes in
// a layout CUDA leaves unspecified; here each lane holds the whole tile, which is what code that
// touches a fragment only through these functions (and element-wise through x[]) can rely on.
// What the emulator checks, as the hardware requires or a real GPU would expose:
//   - load / store pointers 256-bit aligned and ldm a multiple of 16 bytes (CUDA's rules);
//   - TF32 operands already rounded (wmma::__float_to_tf32): the tensor cores read only 19 bits;
//   - a store writes each element from one lane only (lane e mod 32), so a lane that reads
//     what another stored, without __syncwarp between them, reads stale data in a drawn order
//     (a load, by contrast, reads the whole tile: it needs every lane's earlier writes done).
// Products accumulate in float in k order (the hardware's order is its own).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

// Included by device.h, after what it uses (current_thread, device_fault).

namespace nvcuda::wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && (K == 8 || K == 16), "the emulator has m16n16k8 (TF32) and m16n16k16 (bf16)");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : (K == 8 ? std::is_same_v<T, precision::tf32>
                                                           : std::is_same_v<T, __nv_bfloat16>),
                "an operand type the shape does not take");
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;  // the whole tile, in every lane
  using element_type = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;
  element_type x[num_elements];
  element_type& at(int r, int c) { return x[r * cols + c]; }
  const element_type& at(int r, int c) const { return x[r * cols + c]; }
};

// cvt.rna.tf32.f32: to 10 mantissa bits, to nearest, ties away from zero.
inline float __float_to_tf32(float in) {
  if (in != in) return in;
  uint32_t bits;
  std::memcpy(&bits, &in, 4);
  bits = (bits + 0x1000u) & 0xffffe000u;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

namespace detail {
inline void check_address(const void* p, unsigned ldm, size_t element_bytes, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::bcos::emu::device_fault(std::string(op) + ": the pointer is not 256-bit aligned");
  if (ldm * element_bytes % 16 != 0)
    ::bcos::emu::device_fault(std::string(op) + ": ldm " + std::to_string(ldm) + " is not a multiple of 16 bytes");
}
inline bool is_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return v != v || (bits & 0x1fffu) == 0;
}
template <class Frag, class E>
void load(Frag& f, const E* p, unsigned ldm, bool row_major_memory, const char* op) {
  check_address(p, ldm, sizeof(E), op);
  for (int r = 0; r < Frag::rows; ++r)
    for (int c = 0; c < Frag::cols; ++c) f.at(r, c) = row_major_memory ? p[r * ldm + c] : p[c * ldm + r];
}
}  // namespace detail

template <class Use, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 8, precision::tf32, Layout>& f, const float* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>);
  detail::load(f, p, ldm, std::is_same_v<Layout, row_major>, "wmma::load_matrix_sync");
}
template <class Use, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>);
  detail::load(f, p, ldm, std::is_same_v<Layout, row_major>, "wmma::load_matrix_sync");
}

template <int K>
void load_matrix_sync(fragment<accumulator, 16, 16, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  detail::load(f, p, ldm, layout == mem_row_major, "wmma::load_matrix_sync");
}

template <int K>
void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float>& f, unsigned ldm, layout_t layout) {
  detail::check_address(p, ldm, sizeof(float), "wmma::store_matrix_sync");
  const int lane = ::bcos::emu::current_thread->lane;
  for (int e = lane; e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.at(r, c);
  }
}

template <class Use, int K, class T, class Layout, class V>
void fill_fragment(fragment<Use, 16, 16, K, T, Layout>& f, const V& v) {
  for (auto& e : f.x) e = static_cast<typename fragment<Use, 16, 16, K, T, Layout>::element_type>(v);
}

// d = a b + c.
template <int K, class T, class LayoutA, class LayoutB>
void mma_sync(fragment<accumulator, 16, 16, K, float>& d, const fragment<matrix_a, 16, 16, K, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, K, T, LayoutB>& b, const fragment<accumulator, 16, 16, K, float>& c) {
  if constexpr (std::is_same_v<T, precision::tf32>) {
    for (float v : a.x)
      if (!detail::is_tf32(v)) ::bcos::emu::device_fault("wmma::mma_sync: a TF32 operand of matrix_a was not rounded (__float_to_tf32)");
    for (float v : b.x)
      if (!detail::is_tf32(v)) ::bcos::emu::device_fault("wmma::mma_sync: a TF32 operand of matrix_b was not rounded (__float_to_tf32)");
  }
  fragment<accumulator, 16, 16, K, float> out;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.at(i, j);
      for (int k = 0; k < K; ++k) s += float(a.at(i, k)) * float(b.at(k, j));
      out.at(i, j) = s;
    }
  d = out;
}

}  // namespace nvcuda::wmma
