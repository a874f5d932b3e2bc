// bfloat16 GEMM for inference: C = A · B with both operands rounded to bfloat16 (to nearest even)
// while they are packed, products summed in float32 by AMX (Advanced Matrix Extensions): one
// TDPBF16PS multiplies a 16 x 32 bf16 tile of A by a 32 x 16 tile of B into a 16 x 16 float32
// tile, 8192 multiply-adds per instruction. On this CPU that is several times the float32
// AVX-512 kernel (measured in the commit message); AVX-512 BF16's vdpbf16ps alone, tried first,
// ran at 0.55x of it. The price is bf16's 8-bit mantissa on the inputs (relative error ≤ 2^-9 per
// operand), which is why it is an option (set_cpu_bf16) for inference and explanations.
//
// Layout: micro-tiles of C are 32 x 32 (four accumulator tiles); k runs in steps of 32.
//   packed A block: row-major bf16, ablk[r * kp + p], rows padded to 32, k padded to kp (mult. of 32)
//   packed B panel (32 columns): bp[(pair * 32 + j) * 2 + h] = bf16 b[2·pair + h][j] -- AMX's
//   "VNNI" layout: tile row `pair` holds the two k-values of each of 16 columns side by side.
// Linux hands out AMX state only on request (arch_prctl ARCH_REQ_XCOMP_PERM), made once.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BCOS_AMX 1
#endif

#include "tensor/copy.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos {

namespace {
std::atomic<bool> g_bf16{false};

// AMX-BF16 on the CPU and the kernel's permission to use its tile state.
bool cpu_has_amx() {
#ifdef BCOS_AMX
  static const bool has = [] {
    // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 22 AMX-BF16 (read directly: clang 14's
    // __builtin_cpu_supports does not know the AMX names).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
#else
  return false;
#endif
}
}  // namespace

bool cpu_bf16_supported() { return cpu_has_amx(); }
void set_cpu_bf16(bool on) { g_bf16.store(on && cpu_has_amx()); }
bool cpu_bf16() { return g_bf16.load(std::memory_order_relaxed); }

}  // namespace bcos

namespace bcos::cpu {

bool bf16_product(int64_t m, int64_t n, int64_t k) {
  return (cpu_bf16() || (bf16_operands_flag() && cpu_bf16_supported())) && m >= 64 && n >= 64 && k >= 32;
}

namespace {
// float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN. Branch-free: vectorises.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

// The same rounding kept as a float (autocast's operands).
inline float round_to_bf16(float f) { return BFloat16::to_float(to_bf16(f)); }
}  // namespace

Bf16OperandsScope::Bf16OperandsScope(bool on) : previous_(bf16_operands_flag()) { bf16_operands_flag() = on; }
Bf16OperandsScope::~Bf16OperandsScope() { bf16_operands_flag() = previous_; }

namespace {
// Whether x's elements fill offsets [0, numel) of its storage span exactly, in some order of its
// dims: contiguous, or a transposed / permuted view of a contiguous block.
bool dense_in_some_order(const Tensor& x) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dims that matter
  for (int d = 0; d < x.dim(); ++d)
    if (x.size(d) > 1) dims.emplace_back(x.stride(d), x.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  return true;
}
}  // namespace

Tensor rounded_operand(const Tensor& x, DType operands) {
  BCOS_CHECK(x.dtype() == DType::f32 && (operands == DType::bf16 || operands == DType::f16),
             "autocast: rounds float32 operands to bfloat16 or float16, got ", x.dtype(), " to ", operands);
  // A dense block (a transposed weight, say) is rounded in its own layout, in one linear pass; a
  // GEMM reads it through the same strides. Anything else is made contiguous first.
  const Tensor src = dense_in_some_order(x) ? x : raw_contiguous(x);
  Tensor buffer = empty({x.numel()}, {DType::f32, x.device()});
  const float* s = static_cast<const float*>(src.raw_data());
  float* o = buffer.data<float>();
  parallel_for(x.numel(), 1, [&](int64_t b, int64_t e) {
    if (operands == DType::bf16) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) o[i] = round_to_bf16(s[i]);
    } else {
      for (int64_t i = b; i < e; ++i) o[i] = float(Half(s[i]));
    }
  });
  return buffer.alias(x.shape(), src.strides(), 0);
}

#ifdef BCOS_AMX
namespace {

constexpr int64_t kTile = 32;                        // C micro-tile 32 x 32; k step 32
constexpr int64_t MC = 128, KC = 512, NC = 1024;     // A block 128 x 512 bf16 = 128 KiB; B slice 1 MiB

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
std::unique_ptr<T[], FreeDeleter> aligned(int64_t count) {
  const size_t bytes = std::max<size_t>((size_t(count) * sizeof(T) + 63) / 64 * 64, 64);
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(std::aligned_alloc(64, bytes)));
}

// A[0:rows, 0:kc] -> ablk[r * kp + p]; zero for r in [rows, rows_pad) and p in [kc, kp).
void pack_a_block(const float* a, int64_t rsa, int64_t csa, int64_t rows, int64_t rows_pad, int64_t kc,
                  int64_t kp, uint16_t* ablk) {
  for (int64_t r = 0; r < rows_pad; ++r) {
    uint16_t* dst = ablk + r * kp;
    if (r >= rows) {
      std::memset(dst, 0, size_t(kp) * 2);
      continue;
    }
    const float* src = a + r * rsa;
    if (csa == 1)
      for (int64_t p = 0; p < kc; ++p) dst[p] = to_bf16(src[p]);
    else
      for (int64_t p = 0; p < kc; ++p) dst[p] = to_bf16(src[p * csa]);
    std::memset(dst + kc, 0, size_t(kp - kc) * 2);
  }
}

// B[0:kc, 0:cols] (cols ≤ 32) -> one VNNI panel of kp / 2 pair rows; zero beyond cols and kc.
void pack_b_panel(const float* b, int64_t rsb, int64_t csb, int64_t cols, int64_t kc, int64_t kp, uint16_t* bp) {
  for (int64_t q = 0; q < kp / 2; ++q) {
    uint16_t* dst = bp + q * kTile * 2;
    for (int h = 0; h < 2; ++h) {
      const int64_t p = 2 * q + h;
      if (p >= kc) {
        for (int64_t j = 0; j < kTile; ++j) dst[2 * j + h] = 0;
        continue;
      }
      const float* row = b + p * rsb;
      for (int64_t j = 0; j < cols; ++j) dst[2 * j + h] = to_bf16(row[j * csb]);
      for (int64_t j = cols; j < kTile; ++j) dst[2 * j + h] = 0;
    }
  }
}

// Palette 1, eight tiles of 16 rows x 64 bytes: 0-3 the C tiles (16 x 16 float), 4-5 A (16 x 32
// bf16), 6-7 B (16 pair rows x 16 columns).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

// c[0:mr, 0:nr] (+)= A rows (32 x kp, row stride kp) · B panel (kp x 32). Full tiles with
// contiguous C rows go straight between C and the tile registers; others through `tmp`.
__attribute__((target("amx-tile,amx-bf16"))) void kernel(int64_t kp, const uint16_t* a, const uint16_t* bp,
                                                         float* c, int64_t rsc, int64_t csc, int64_t mr,
                                                         int64_t nr, bool accumulate) {
  const bool direct = mr == kTile && nr == kTile && csc == 1;
  const int64_t a_stride = kp * 2, b_stride = kTile * 2 * 2, c_stride = rsc * 4;
  if (direct && accumulate) {
    _tile_loadd(0, c, c_stride);
    _tile_loadd(1, c + 16, c_stride);
    _tile_loadd(2, c + 16 * rsc, c_stride);
    _tile_loadd(3, c + 16 * rsc + 16, c_stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t p = 0; p < kp; p += kTile) {
    _tile_loadd(4, a + p, a_stride);
    _tile_loadd(5, a + 16 * kp + p, a_stride);
    const uint16_t* b = bp + (p / 2) * kTile * 2;
    _tile_loadd(6, b, b_stride);
    _tile_loadd(7, b + 32, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  if (direct) {
    _tile_stored(0, c, c_stride);
    _tile_stored(1, c + 16, c_stride);
    _tile_stored(2, c + 16 * rsc, c_stride);
    _tile_stored(3, c + 16 * rsc + 16, c_stride);
    return;
  }
  alignas(64) float tmp[kTile][kTile];
  _tile_stored(0, &tmp[0][0], kTile * 4);
  _tile_stored(1, &tmp[0][16], kTile * 4);
  _tile_stored(2, &tmp[16][0], kTile * 4);
  _tile_stored(3, &tmp[16][16], kTile * 4);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      float& dst = c[i * rsc + j * csc];
      dst = accumulate ? dst + tmp[i][j] : tmp[i][j];
    }
}

}  // namespace

bool gemm_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa, const float* b,
               int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate) {
  if (!cpu_has_amx()) return false;
  if (m == 0 || n == 0) return true;
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c[i * rsc + j * csc] = 0.0f;
    return true;
  }
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && double(m) * double(n) * double(k) >= 64.0 * 64.0 * 64.0) threads = num_threads();
#endif
  auto round_up = [](int64_t v) { return (v + kTile - 1) / kTile * kTile; };
  const int64_t kp_max = round_up(std::min(KC, k)), nc_max = round_up(std::min(NC, n));
  const int64_t mc_max = round_up(std::min(MC, m));
  auto bp = aligned<uint16_t>(kp_max * nc_max);
  std::vector<std::unique_ptr<uint16_t[], FreeDeleter>> ablocks;
  for (int t = 0; t < threads; ++t) ablocks.push_back(aligned<uint16_t>(mc_max * kp_max));
  const int64_t m_blocks = (m + MC - 1) / MC;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#ifdef _OPENMP
    uint16_t* ablk = ablocks[size_t(omp_get_thread_num())].get();
#else
    uint16_t* ablk = ablocks[0].get();
#endif
    configure_tiles();  // tile state is per thread
    for (int64_t jc = 0; jc < n; jc += NC) {
      const int64_t nc = std::min(NC, n - jc), panels = (nc + kTile - 1) / kTile;
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = std::min(KC, k - pc), kp = round_up(kc);
        const bool acc = accumulate || pc > 0;
#pragma omp for schedule(static)
        for (int64_t jp = 0; jp < panels; ++jp)
          pack_b_panel(b + pc * rsb + (jc + jp * kTile) * csb, rsb, csb, std::min(kTile, nc - jp * kTile), kc, kp,
                       bp.get() + jp * kTile * kp);
        // Tasks: (row block, column panel); a thread re-packs its A block only when it changes.
        int64_t packed = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < m_blocks * panels; ++t) {
          const int64_t ib = t / panels, jp = t % panels;
          const int64_t ic = ib * MC, mc = std::min(MC, m - ic);
          if (packed != ib) {
            pack_a_block(a + ic * rsa + pc * csa, rsa, csa, mc, round_up(mc), kc, kp, ablk);
            packed = ib;
          }
          const int64_t j = jc + jp * kTile;
          for (int64_t ir = 0; ir < mc; ir += kTile)
            kernel(kp, ablk + ir * kp, bp.get() + jp * kTile * kp, c + (ic + ir) * rsc + j * csc, rsc, csc,
                   std::min(kTile, mc - ir), std::min(kTile, n - j), acc);
        }
      }
    }
    release_tiles();
  }
  return true;
}

#else
bool gemm_bf16(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*,
               int64_t, int64_t, bool) {
  return false;
}
#endif

}  // namespace bcos::cpu
