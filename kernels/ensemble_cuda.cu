// CUDA executors of the ensemble ops: the per-element code of ensemble.h, launched on the caller's stream.
#include <cuda_runtime.h>

#include "ensemble.h"

namespace dift {
namespace {

constexpr int kLatentsBlock = 256;
constexpr int kMaxGridY = 65535;

// Thread per (image b, group j of 4 latent elements): one read of μ, σ, then all E members written.
template <class In, class Out>
__global__ void __launch_bounds__(kLatentsBlock)
    latents_kernel(const In* __restrict__ mean, const In* __restrict__ stdv, const uint64_t* __restrict__ keys,
                   Out* __restrict__ out, int64_t batch, int64_t numel, int32_t ensemble, uint64_t seed,
                   float sqrt_alpha, float sqrt_one_minus_alpha, float scaling) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= groups) return;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const uint64_t key = keys[b];
    uint32_t k0, k1;
    philox_key(seed, key, &k0, &k1);
    latents_group(mean + b * numel, stdv + b * numel, out + b * ensemble * numel, numel, j, ensemble, key, k0, k1,
                  sqrt_alpha, sqrt_one_minus_alpha, scaling);
  }
}

// One plain 16-byte store (p 16-byte aligned). Written as PTX: from a float4 assignment nvcc split the fp32
// kernel's store into four, and __stwb() became a STRONG.SM store in the SASS.
__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

// Block of 32 threads x kNormChunks channel chunks for a tile of 32·V pixels of one image: thread (x, y) averages
// V consecutive pixels over the channels of chunk y, reading each member with one V-element (16-byte when V > 1)
// load, coalesced along pixels, and sums the means' squares; then the block transposes its tile through shared
// memory, 32 pixels at a time, to write the normalised [P, C] rows coalesced along channels.
// V > 1 needs P % V == 0 and 16-byte aligned feats and mean (the launcher checks; otherwise it launches V = 1).
// At least 3 blocks per SM (<= 85 registers): with the plain bound ptxas capped the bf16 normalising variant at
// 64 registers and spilled 2 in the channel loop (sm_90, nvcc 13.0); 3 x 256 threads with 4 16-byte loads in
// flight each are ~48 KB in flight per SM, above what HBM3e needs to stream at full rate.
template <class T, int V, bool kNormalize>
__global__ void __launch_bounds__(32 * kNormChunks, 3)
    reduce_kernel(const T* __restrict__ feats, float* mean, float* __restrict__ normalized, int64_t batch,
                  int64_t channels, int64_t pixels, int32_t ensemble) {
  constexpr int kTile = 32 * V;
  __shared__ float partial[kNormalize ? kNormChunks : 1][kNormalize ? kTile : 1];
  __shared__ float norms[kNormalize ? kTile : 1];
  __shared__ float tile[32][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t C = channels, P = pixels;
  const int64_t p0 = int64_t(blockIdx.x) * kTile, p = p0 + int64_t(tx) * V;  // p < P implies p + V <= P
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    float ss[V] = {};
    if (p < P) {
      for (int64_t c = norm_chunk_begin(C, ty); c < norm_chunk_begin(C, ty + 1); ++c) {
        float m[V];
        member_mean_vec<V>(feats + (b * ensemble * C + c) * P + p, C * P, ensemble, m);
        float* dst = mean + (b * C + c) * P + p;
        if constexpr (V % 4 == 0) {
          DIFT_UNROLL
          for (int i = 0; i < V; i += 4) {
            store4(dst + i, m[i], m[i + 1], m[i + 2], m[i + 3]);
          }
        } else {
          DIFT_UNROLL
          for (int i = 0; i < V; ++i) dst[i] = m[i];
        }
        if constexpr (kNormalize) {
          DIFT_UNROLL
          for (int i = 0; i < V; ++i) ss[i] = fadd(ss[i], fmul(m[i], m[i]));
        }
      }
    }
    if constexpr (kNormalize) {
      DIFT_UNROLL
      for (int i = 0; i < V; ++i) partial[ty][tx * V + i] = ss[i];
      __syncthreads();  // also makes this block's writes of `mean` visible to the whole block
      for (int q = ty * 32 + tx; q < kTile; q += 32 * kNormChunks) norms[q] = norm_from_chunks(&partial[0][q], kTile);
      __syncthreads();
      for (int s = 0; s < V; ++s) {  // 32-pixel sub-tiles
        const int64_t ps = p0 + 32 * s;
        for (int64_t c0 = 0; c0 < C; c0 += 32) {
          for (int k = ty; k < 32; k += kNormChunks) {
            const int64_t c = c0 + k;
            tile[k][tx] = (c < C && ps + tx < P) ? mean[(b * C + c) * P + ps + tx] : 0.0f;
          }
          __syncthreads();
          for (int k = ty; k < 32; k += kNormChunks) {
            const int64_t q = ps + k, c = c0 + tx;
            if (q < P && c < C) normalized[(b * P + q) * C + c] = fdiv(tile[tx][k], norms[32 * s + k]);
          }
          __syncthreads();
        }
      }
    }
  }
}

__global__ void philox_kernel(const uint32_t* __restrict__ counters, int64_t n, uint32_t k0, uint32_t k1,
                              uint32_t* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) philox4x32_10(counters + 4 * i, k0, k1, out + 4 * i);
}

__global__ void noise_kernel(const uint64_t* __restrict__ keys, int64_t rows, int32_t ensemble, int64_t numel,
                             uint64_t seed, uint32_t stream_id, float* __restrict__ out) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < rows * groups) noise_group(t, keys, ensemble, numel, seed, stream_id, out);
}

__global__ void probe_kernel(int* flag) { *flag = 42; }

// Runs `launch` with `device` current, restoring the caller's device; returns the launch error, if any.
template <class F>
const char* on_device(int device, F&& launch) {
  int previous = 0;
  cudaError_t err = cudaGetDevice(&previous);
  if (err == cudaSuccess && previous != device) err = cudaSetDevice(device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  launch();
  err = cudaGetLastError();
  if (previous != device) cudaSetDevice(previous);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

unsigned blocks_for(int64_t n, int block) { return unsigned((n + block - 1) / block); }

template <class In, class Out>
void launch_latents(const LatentsArgs& a, cudaStream_t stream) {
  const int64_t groups = (a.numel + 3) / 4;
  const dim3 grid(blocks_for(groups, kLatentsBlock), unsigned(a.batch < kMaxGridY ? a.batch : kMaxGridY));
  latents_kernel<In, Out><<<grid, kLatentsBlock, 0, stream>>>(
      static_cast<const In*>(a.mean), static_cast<const In*>(a.stdv), a.keys, static_cast<Out*>(a.out), a.batch,
      a.numel, a.ensemble, a.seed, a.sqrt_alpha, a.sqrt_one_minus_alpha, a.scaling);
}

template <class In>
void launch_latents_out(const LatentsArgs& a, cudaStream_t stream) {
  switch (a.out_dtype) {
    case DType::F32: return launch_latents<In, float>(a, stream);
    case DType::F16: return launch_latents<In, f16_t>(a, stream);
    case DType::BF16: return launch_latents<In, bf16_t>(a, stream);
  }
}

template <class T, int V>
void launch_reduce_v(const ReduceArgs& a, cudaStream_t stream) {
  const dim3 grid(blocks_for(a.pixels, 32 * V), unsigned(a.batch < kMaxGridY ? a.batch : kMaxGridY));
  const dim3 block(32, kNormChunks);
  const auto* feats = static_cast<const T*>(a.feats);
  if (a.normalized) {
    reduce_kernel<T, V, true><<<grid, block, 0, stream>>>(feats, a.mean, a.normalized, a.batch, a.channels, a.pixels,
                                                          a.ensemble);
  } else {
    reduce_kernel<T, V, false><<<grid, block, 0, stream>>>(feats, a.mean, nullptr, a.batch, a.channels, a.pixels,
                                                           a.ensemble);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte loads when every row starts 16-byte aligned (P a multiple of the vector, aligned bases), else scalar.
template <class T>
void launch_reduce(const ReduceArgs& a, cudaStream_t stream) {
  constexpr int kVector = 16 / sizeof(T);
  if (a.pixels % kVector == 0 && aligned16(a.feats) && aligned16(a.mean)) {
    launch_reduce_v<T, kVector>(a, stream);
  } else {
    launch_reduce_v<T, 1>(a, stream);
  }
}

constexpr const char* kTooLarge = "tensor too large for one launch (grid x dimension exceeds 2^31 - 1 blocks)";

}  // namespace

const char* ensemble_latents_cuda(const LatentsArgs& a, int device, void* stream) {
  if (a.batch == 0 || a.numel == 0) return nullptr;
  if ((a.numel + 3) / 4 / kLatentsBlock >= (int64_t(1) << 31)) return kTooLarge;
  return on_device(device, [&] {
    auto s = static_cast<cudaStream_t>(stream);
    switch (a.in_dtype) {
      case DType::F32: return launch_latents_out<float>(a, s);
      case DType::F16: return launch_latents_out<f16_t>(a, s);
      case DType::BF16: return launch_latents_out<bf16_t>(a, s);
    }
  });
}

const char* ensemble_reduce_cuda(const ReduceArgs& a, int device, void* stream) {
  if (a.batch == 0 || a.pixels == 0 || a.channels == 0) return nullptr;
  if (a.pixels / 32 >= (int64_t(1) << 31)) return kTooLarge;  // the scalar kernel's grid, the largest
  return on_device(device, [&] {
    auto s = static_cast<cudaStream_t>(stream);
    switch (a.dtype) {
      case DType::F32: return launch_reduce<float>(a, s);
      case DType::F16: return launch_reduce<f16_t>(a, s);
      case DType::BF16: return launch_reduce<bf16_t>(a, s);
    }
  });
}

const char* philox_cuda(const uint32_t* counters, int64_t n, uint32_t k0, uint32_t k1, uint32_t* out, int device,
                        void* stream) {
  if (n == 0) return nullptr;
  if (n / 256 >= (int64_t(1) << 31)) return kTooLarge;
  return on_device(device, [&] {
    philox_kernel<<<blocks_for(n, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(counters, n, k0, k1, out);
  });
}

const char* contract_noise_cuda(const uint64_t* keys, int64_t batch, int32_t ensemble, int64_t numel, uint64_t seed,
                                uint32_t stream_id, float* out, int device, void* stream) {
  const int64_t threads = batch * ensemble * ((numel + 3) / 4);
  if (threads == 0) return nullptr;
  if (threads / 256 >= (int64_t(1) << 31)) return kTooLarge;
  return on_device(device, [&] {
    noise_kernel<<<blocks_for(threads, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        keys, batch * ensemble, ensemble, numel, seed, stream_id, out);
  });
}

const char* cuda_probe(int device, int* device_count, int* driver_version, int* runtime_version) {
  *device_count = 0;
  *driver_version = 0;
  *runtime_version = 0;
  cudaDriverGetVersion(driver_version);
  cudaRuntimeGetVersion(runtime_version);
  cudaError_t err = cudaGetDeviceCount(device_count);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (device < 0 || device >= *device_count) return "no such CUDA device";
  int previous = 0;
  if ((err = cudaGetDevice(&previous)) != cudaSuccess || (err = cudaSetDevice(device)) != cudaSuccess) {
    return cudaGetErrorString(err);
  }
  int* flag = nullptr;
  int value = 0;
  err = cudaMalloc(&flag, sizeof(int));
  if (err == cudaSuccess) {
    probe_kernel<<<1, 1>>>(flag);
    err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaMemcpy(&value, flag, sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(flag);
  }
  cudaSetDevice(previous);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return value == 42 ? nullptr : "probe kernel did not run";
}

}  // namespace dift
