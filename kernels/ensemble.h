// The ensemble ops, shared by the CPU and CUDA executors: per-element code (__host__ __device__) and the
// launchers' declarations. Launchers take raw pointers, sizes and a stream, no framework types.
//
// Arithmetic contract (mirrored by dift_fast/_torch_impl.py): every float32 operation is rounded on its own
// (no fused multiply-add: host code builds with -ffp-contract=off, device code uses the __f*_rn intrinsics),
// casts to fp16/bf16 round to nearest even like torch's .to().
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.h"

namespace dift {

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

// Storage types of the half formats: bit patterns, converted in software identically on host and device.
struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

DIFT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

DIFT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

DIFT_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

DIFT_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

DIFT_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

DIFT_HD float fsqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// float -> IEEE half, round to nearest even; NaN -> sign | 0x7E00 (what c10::Half does).
DIFT_HD uint16_t float_to_half_bits(float f) {
  uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u >= 0x47800000u) {  // >= 65536 (or inf/NaN): inf or NaN
    return uint16_t(sign | (u > 0x7F800000u ? 0x7E00u : 0x7C00u));
  }
  if (u < 0x38800000u) {  // below 2^-14: half subnormal or zero; adding 0.5f rounds at the 2^-24 grid
    const uint32_t magic = 0x3F000000u;  // 0.5f
    return uint16_t(sign | (float_bits(fadd(bits_float(u), bits_float(magic))) - magic));
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xC8000FFFu + odd;  // rebias the exponent (15 - 127) and round to nearest even; may carry into inf
  return uint16_t(sign | (u >> 13));
}

DIFT_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float v = fmul(float(man), 5.9604644775390625e-8f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// float -> bfloat16, round to nearest even; NaN -> 0x7FC0 (what c10::BFloat16 does).
DIFT_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

DIFT_HD float load(const float* p) { return *p; }
DIFT_HD float load(const f16_t* p) { return half_bits_to_float(p->bits); }
DIFT_HD float load(const bf16_t* p) { return bits_float(uint32_t(p->bits) << 16); }
DIFT_HD void store(float* p, float v) { *p = v; }
DIFT_HD void store(f16_t* p, float v) { p->bits = float_to_half_bits(v); }
DIFT_HD void store(bf16_t* p, float v) { p->bits = float_to_bf16_bits(v); }

// ---------------------------------------------------------------------------------------------------------------
// ensemble_latents, one group j of four latent elements of one image, all E members:
//   z0 = (μ + σ·ε₁)·s;  x_t = √ᾱ·z0 + √(1−ᾱ)·ε₂, one rounding per operation, one cast to Out.
// mean/stdv: the image's [numel]; out: member 0 of the image, members numel apart.
template <class In, class Out>
DIFT_HD void latents_group(const In* mean, const In* stdv, Out* out, int64_t numel, int64_t j, int32_t ensemble,
                           uint64_t image_key, uint32_t k0, uint32_t k1, float sqrt_alpha,
                           float sqrt_one_minus_alpha, float scaling) {
  const int64_t base = 4 * j;
  const int64_t count = numel - base;  // >= 4 except in a partial last group
  // Fixed-size loops with a guard (not `i < count`) so the device code keeps the arrays in registers.
  float m[4] = {}, s[4] = {};
  for (int i = 0; i < 4; ++i) {
    if (i < count) {
      m[i] = load(mean + base + i);
      s[i] = load(stdv + base + i);
    }
  }
  for (int32_t e = 0; e < ensemble; ++e) {
    float eps1[4], eps2[4];
    contract_normals(image_key, k0, k1, uint32_t(j), uint32_t(e), kPosteriorStream, eps1);
    contract_normals(image_key, k0, k1, uint32_t(j), uint32_t(e), kDiffusionStream, eps2);
    Out* dst = out + e * numel + base;
    for (int i = 0; i < 4; ++i) {
      const float z0 = fmul(fadd(m[i], fmul(s[i], eps1[i])), scaling);
      if (i < count) store(dst + i, fadd(fmul(sqrt_alpha, z0), fmul(sqrt_one_minus_alpha, eps2[i])));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// contract noise alone (tests and benchmarks): item t of batch*E*groups writes the four normals of group j of
// member e of image b into out[(b*E + e)*numel + 4j ...].
DIFT_HD void noise_group(int64_t t, const uint64_t* keys, int32_t ensemble, int64_t numel, uint64_t seed,
                         uint32_t stream_id, float* out) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t j = t % groups, be = t / groups, b = be / ensemble, e = be % ensemble;
  uint32_t k0, k1;
  philox_key(seed, keys[b], &k0, &k1);
  float n[4];
  contract_normals(keys[b], k0, k1, uint32_t(j), uint32_t(e), stream_id, n);
  float* dst = out + be * numel + 4 * j;
  for (int64_t i = 0; i < 4 && 4 * j + i < numel; ++i) dst[i] = n[i];
}

// ---------------------------------------------------------------------------------------------------------------
// ensemble_reduce: mean = (f_0 + f_1 + ... + f_{E-1}) / E in float32, members added in order.
// The L2 norm over C channels is summed in kNormChunks contiguous channel chunks (each in channel order), and the
// chunk sums are added in chunk order; both executors use this order, so CPU and CUDA agree bit for bit.
constexpr int kNormChunks = 8;
// Members whose loads are issued together before they are added (in order): several loads in flight per thread.
constexpr int kMemberBatch = 4;

DIFT_HD int64_t norm_chunk_begin(int64_t channels, int chunk) { return channels * chunk / kNormChunks; }

// Element h of a 32-bit word holding 4 / sizeof(T) elements (little-endian), as float: what load() gives.
DIFT_HD float load_from_word(uint32_t w, int, const float*) { return bits_float(w); }
DIFT_HD float load_from_word(uint32_t w, int h, const bf16_t*) { return bits_float(h ? w & 0xFFFF0000u : w << 16); }
DIFT_HD float load_from_word(uint32_t w, int h, const f16_t*) { return half_bits_to_float(uint16_t(h ? w >> 16 : w)); }

// V consecutive elements as floats. On the device, V elements of 16 bytes are one 16-byte streaming load (the
// caller guarantees 16-byte alignment; the features are read once, so they should not evict the mean from L2);
// otherwise, and on the host, one load per element (the host compiler vectorises the lanes).
template <int V, class T>
DIFT_HD void load_vec(const T* p, float out[V]) {
#if defined(__CUDA_ARCH__)
  if constexpr (V * sizeof(T) == 16) {
    constexpr int kPerWord = 4 / sizeof(T);
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    DIFT_UNROLL
    for (int i = 0; i < V; ++i) out[i] = load_from_word(words[i / kPerWord], i % kPerWord, p);
  } else
#endif
  {
    DIFT_UNROLL
    for (int i = 0; i < V; ++i) out[i] = load(p + i);
  }
}

// mean[0..V) of V consecutive pixels: members in batches of kMemberBatch (all loads of a batch first, then the
// additions, in member order), the remainder one by one. The sum starts from member 0 itself (not 0 + f_0, which
// would turn -0 into +0), exactly like the twin's `acc = f_0; acc += f_e`.
template <int V, class T>
DIFT_HD void member_mean_vec(const T* f, int64_t member_stride, int32_t ensemble, float* mean) {
  float acc[V];
  int32_t e = 0;
  for (; e + kMemberBatch <= ensemble; e += kMemberBatch) {
    float x[kMemberBatch][V];
    DIFT_UNROLL
    for (int k = 0; k < kMemberBatch; ++k) load_vec<V>(f + (e + k) * member_stride, x[k]);
    DIFT_UNROLL
    for (int k = 0; k < kMemberBatch; ++k) {
      DIFT_UNROLL
      for (int i = 0; i < V; ++i) acc[i] = (e + k == 0) ? x[k][i] : fadd(acc[i], x[k][i]);
    }
  }
  for (; e < ensemble; ++e) {
    float x[V];
    load_vec<V>(f + e * member_stride, x);
    DIFT_UNROLL
    for (int i = 0; i < V; ++i) acc[i] = e == 0 ? x[i] : fadd(acc[i], x[i]);
  }
  const float count = float(ensemble);
  DIFT_UNROLL
  for (int i = 0; i < V; ++i) mean[i] = fdiv(acc[i], count);
}

DIFT_HD float norm_from_chunks(const float* partial, int64_t chunk_stride) {
  float total = partial[0];
  for (int r = 1; r < kNormChunks; ++r) total = fadd(total, partial[r * chunk_stride]);
  const float norm = fsqrt(total);
  return norm > 1e-12f ? norm : 1e-12f;  // clamp_min(1e-12); NaN stays NaN
}

// ---------------------------------------------------------------------------------------------------------------
// Launchers. CPU ones run on the calling thread plus OpenMP (num_threads <= 0: the OpenMP default); CUDA ones
// launch on `stream` of `device` and return nullptr or a static error message.
struct LatentsArgs {
  const void* mean;       // [B, numel] in in_dtype
  const void* stdv;       // [B, numel] in in_dtype
  const uint64_t* keys;   // [B] image keys
  void* out;              // [B*E, numel] in out_dtype
  DType in_dtype, out_dtype;
  int64_t batch, numel;
  int32_t ensemble;
  uint64_t seed;
  float sqrt_alpha, sqrt_one_minus_alpha, scaling;
};

struct ReduceArgs {
  const void* feats;  // [B*E, C, P] in dtype
  float* mean;        // [B, C, P]
  float* normalized;  // [B, P, C] or nullptr
  DType dtype;
  int64_t batch, channels, pixels;
  int32_t ensemble;
};

void ensemble_latents_cpu(const LatentsArgs& args, int num_threads);
void ensemble_reduce_cpu(const ReduceArgs& args, int num_threads);
void philox_cpu(const uint32_t* counters, int64_t n, uint32_t k0, uint32_t k1, uint32_t* out);  // [n, 4]
void contract_noise_cpu(const uint64_t* keys, int64_t batch, int32_t ensemble, int64_t numel, uint64_t seed,
                        uint32_t stream_id, float* out, int num_threads);  // out [B, E, numel]
bool openmp_enabled();

const char* ensemble_latents_cuda(const LatentsArgs& args, int device, void* stream);
const char* ensemble_reduce_cuda(const ReduceArgs& args, int device, void* stream);
const char* philox_cuda(const uint32_t* counters, int64_t n, uint32_t k0, uint32_t k1, uint32_t* out, int device,
                        void* stream);
const char* contract_noise_cuda(const uint64_t* keys, int64_t batch, int32_t ensemble, int64_t numel, uint64_t seed,
                                uint32_t stream_id, float* out, int device, void* stream);
// Runs a trivial kernel on `device` and synchronises; nullptr when it worked. Writes the driver/runtime versions.
const char* cuda_probe(int device, int* device_count, int* driver_version, int* runtime_version);

}  // namespace dift
