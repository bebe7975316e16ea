// The noise contract (spec §3) for host and device: Philox4x32-10, the uniform mapping and Box–Muller.
//
// Mirrors dift_fast/noise.py: the uint32 words are bit-identical; the normals are evaluated in double precision
// and rounded once to float, as the numpy reference does, so they agree within 1 ulp (libm and CUDA's double
// transcendentals differ only in the last bits of a double).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DIFT_HD __host__ __device__ __forceinline__
#else
#define DIFT_HD inline
#endif

// Full unrolling of fixed-trip loops in device code (registers arrays stay in registers); nothing on the host.
#if defined(__CUDA_ARCH__)
#define DIFT_UNROLL _Pragma("unroll")
#else
#define DIFT_UNROLL
#endif

namespace dift {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr double kTwoPi = 2.0 * 3.141592653589793;  // == 2.0 * np.pi (doubling is exact)

constexpr uint32_t kPosteriorStream = 0;  // ε₁: the VAE posterior sample
constexpr uint32_t kDiffusionStream = 1;  // ε₂: the forward-diffusion noise

// Philox4x32-10 (Salmon et al., SC'11): counter words c[0..3], key words k0, k1 -> out[0..3].
DIFT_HD void philox4x32_10(const uint32_t c[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
  DIFT_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kPhiloxM0) * c0;
    const uint64_t p1 = uint64_t(kPhiloxM1) * c2;
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Key words for a run seed and a 64-bit image key: k0 = low32(seed), k1 = high32(seed) + high32(key) mod 2^32.
DIFT_HD void philox_key(uint64_t seed, uint64_t image_key, uint32_t* k0, uint32_t* k1) {
  *k0 = uint32_t(seed);
  *k1 = uint32_t(seed >> 32) + uint32_t(image_key >> 32);
}

// u = ((a >> 8) + 0.5) * 2^-24 in double: exact and strictly inside (0, 1), like the reference.
DIFT_HD double uniform_from_word(uint32_t a) {
  return (double(a >> 8) + 0.5) * 0x1p-24;
}

// Box–Muller on the pairs (w0, w1) and (w2, w3): r = sqrt(-2 ln uA), θ = 2π uB, (r cos θ, r sin θ).
DIFT_HD void box_muller(const uint32_t w[4], float n[4]) {
  for (int a = 0; a < 4; a += 2) {
    const double ua = uniform_from_word(w[a]);
    const double ub = uniform_from_word(w[a + 1]);
    const double r = sqrt(-2.0 * log(ua));
    const double theta = kTwoPi * ub;
    double s, c;
#if defined(__CUDA_ARCH__)
    sincos(theta, &s, &c);
#else
    s = std::sin(theta);
    c = std::cos(theta);
#endif
    n[a] = float(r * c);
    n[a + 1] = float(r * s);
  }
}

// The four normals of latent elements 4j..4j+3 of ensemble member e, stream s, for one image.
DIFT_HD void contract_normals(uint64_t image_key, uint32_t k0, uint32_t k1, uint32_t j, uint32_t e, uint32_t s,
                              float n[4]) {
  const uint32_t ctr[4] = {j, e, s, uint32_t(image_key)};
  uint32_t w[4];
  philox4x32_10(ctr, k0, k1, w);
  box_muller(w, n);
}

}  // namespace dift
