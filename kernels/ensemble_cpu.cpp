// CPU executors of the ensemble ops: the per-element code of ensemble.h in loops, parallel with OpenMP.
#include <algorithm>
#include <vector>

#include "ensemble.h"

#if defined(_OPENMP)
#include <omp.h>
#define DIFT_OMP_THREADS(n) ((n) > 0 ? (n) : omp_get_max_threads())
#endif

namespace dift {
namespace {

template <class In, class Out>
void latents_impl(const LatentsArgs& a, int num_threads) {
  const auto* mean = static_cast<const In*>(a.mean);
  const auto* stdv = static_cast<const In*>(a.stdv);
  auto* out = static_cast<Out*>(a.out);
  const int64_t groups = (a.numel + 3) / 4;
  const int64_t total = a.batch * groups;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(DIFT_OMP_THREADS(num_threads))
#endif
  for (int64_t t = 0; t < total; ++t) {
    const int64_t b = t / groups, j = t % groups;
    uint32_t k0, k1;
    philox_key(a.seed, a.keys[b], &k0, &k1);
    latents_group(mean + b * a.numel, stdv + b * a.numel, out + b * a.ensemble * a.numel, a.numel, j, a.ensemble,
                  a.keys[b], k0, k1, a.sqrt_alpha, a.sqrt_one_minus_alpha, a.scaling);
  }
  (void)num_threads;
}

template <class In>
void latents_dispatch_out(const LatentsArgs& a, int num_threads) {
  switch (a.out_dtype) {
    case DType::F32: return latents_impl<In, float>(a, num_threads);
    case DType::F16: return latents_impl<In, f16_t>(a, num_threads);
    case DType::BF16: return latents_impl<In, bf16_t>(a, num_threads);
  }
}

// One tile of pixels of one image, with the per-pixel code of ensemble.h (member_mean_vec, norm_from_chunks) in
// the order the CUDA kernel uses: members in order, then the chunked channel sum for the norm. Runs of kCpuVector
// contiguous pixels go through one call (the compiler vectorises across them), the tail pixel by pixel.
constexpr int64_t kPixelTile = 64;
constexpr int kCpuVector = 8;

template <class T>
void reduce_tile(const ReduceArgs& a, int64_t b, int64_t p0, int64_t p1) {
  const auto* feats = static_cast<const T*>(a.feats);
  const int64_t C = a.channels, P = a.pixels, n = p1 - p0;
  const int64_t member_stride = C * P;
  float partial[kNormChunks][kPixelTile] = {};
  for (int r = 0; r < kNormChunks; ++r) {
    for (int64_t c = norm_chunk_begin(C, r); c < norm_chunk_begin(C, r + 1); ++c) {
      const T* src = feats + (b * a.ensemble * C + c) * P + p0;
      float* dst = a.mean + (b * C + c) * P + p0;
      int64_t i = 0;
      for (; i + kCpuVector <= n; i += kCpuVector) member_mean_vec<kCpuVector>(src + i, member_stride, a.ensemble, dst + i);
      for (; i < n; ++i) member_mean_vec<1>(src + i, member_stride, a.ensemble, dst + i);
      if (a.normalized) {
        for (int64_t j = 0; j < n; ++j) partial[r][j] = fadd(partial[r][j], fmul(dst[j], dst[j]));
      }
    }
  }
  if (!a.normalized) return;
  for (int64_t i = 0; i < n; ++i) {
    const float norm = norm_from_chunks(&partial[0][i], kPixelTile);
    const float* src = a.mean + b * C * P + p0 + i;
    float* dst = a.normalized + (b * P + p0 + i) * C;
    for (int64_t c = 0; c < C; ++c) dst[c] = fdiv(src[c * P], norm);
  }
}

template <class T>
void reduce_impl(const ReduceArgs& a, int num_threads) {
  const int64_t tiles = (a.pixels + kPixelTile - 1) / kPixelTile;
  const int64_t total = a.batch * tiles;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(DIFT_OMP_THREADS(num_threads))
#endif
  for (int64_t t = 0; t < total; ++t) {
    const int64_t b = t / tiles, p0 = (t % tiles) * kPixelTile;
    reduce_tile<T>(a, b, p0, std::min(a.pixels, p0 + kPixelTile));
  }
  (void)num_threads;
}

}  // namespace

void ensemble_latents_cpu(const LatentsArgs& a, int num_threads) {
  if (a.batch == 0 || a.numel == 0) return;
  switch (a.in_dtype) {
    case DType::F32: return latents_dispatch_out<float>(a, num_threads);
    case DType::F16: return latents_dispatch_out<f16_t>(a, num_threads);
    case DType::BF16: return latents_dispatch_out<bf16_t>(a, num_threads);
  }
}

void ensemble_reduce_cpu(const ReduceArgs& a, int num_threads) {
  if (a.batch == 0 || a.pixels == 0 || a.channels == 0) return;
  switch (a.dtype) {
    case DType::F32: return reduce_impl<float>(a, num_threads);
    case DType::F16: return reduce_impl<f16_t>(a, num_threads);
    case DType::BF16: return reduce_impl<bf16_t>(a, num_threads);
  }
}

void philox_cpu(const uint32_t* counters, int64_t n, uint32_t k0, uint32_t k1, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i) philox4x32_10(counters + 4 * i, k0, k1, out + 4 * i);
}

void contract_noise_cpu(const uint64_t* keys, int64_t batch, int32_t ensemble, int64_t numel, uint64_t seed,
                        uint32_t stream_id, float* out, int num_threads) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t total = batch * ensemble * groups;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(DIFT_OMP_THREADS(num_threads))
#endif
  for (int64_t t = 0; t < total; ++t) noise_group(t, keys, ensemble, numel, seed, stream_id, out);
  (void)num_threads;
}

bool openmp_enabled() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

}  // namespace dift
