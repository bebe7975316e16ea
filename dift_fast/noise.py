"""The noise contract (spec §3): Philox4x32-10 in numpy, the uniform mapping and Box–Muller.

This module is the reference that the C++/CUDA kernels in ``kernels/philox.h`` must reproduce: the uint32 words
bit for bit, the float32 normals within 4 ulp. Normals are computed in float64 and rounded once to float32, so
an implementation that also works in double precision lands within 1 ulp of this one.

Layout, per image (a ``[4, h, w]`` latent, flat index ``i``; elements ``4j..4j+3`` share one Philox call):

- key words: ``k0 = seed mod 2**32``, ``k1 = (seed >> 32) + (image_key >> 32) mod 2**32``
- counter words: ``c0 = j``, ``c1 = ensemble member e``, ``c2 = stream s`` (0: posterior ε₁, 1: diffusion ε₂),
  ``c3 = image_key mod 2**32``
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = [
    "CONTRACT_VERSION",
    "DIFFUSION_STREAM",
    "POSTERIOR_STREAM",
    "box_muller",
    "ensemble_normals",
    "image_key",
    "philox4x32_10",
    "philox_key",
    "uniforms_from_words",
]

# Version of the contract this module implements; features of different versions are not interchangeable (it is
# part of every feature identity, dift_fast.identity). Bump it with any change to the words or the normals.
CONTRACT_VERSION = 1
POSTERIOR_STREAM = 0  # ε₁: the VAE posterior sample
DIFFUSION_STREAM = 1  # ε₂: the forward-diffusion noise

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint32(0x9E3779B9)
_W1 = np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32_10(counters: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32-10 (Salmon et al., SC'11), vectorised over counters.

    Args:
        counters: uint32 ``[N, 4]`` counter words ``c0..c3``.
        key: uint32 ``[2]`` key words ``k0, k1``.

    Returns:
        uint32 ``[N, 4]`` output words.
    """
    counters = np.asarray(counters)
    key = np.asarray(key)
    if counters.dtype != np.uint32 or counters.ndim != 2 or counters.shape[1] != 4:
        raise TypeError(f"counters must be a uint32 array of shape [N, 4], got {counters.dtype} {counters.shape}")
    if key.dtype != np.uint32 or key.shape != (2,):
        raise TypeError(f"key must be a uint32 array of shape [2], got {key.dtype} {key.shape}")
    c0, c1, c2, c3 = (counters[:, i].copy() for i in range(4))
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = _M0 * c0.astype(np.uint64)
            p1 = _M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> _SHIFT32).astype(np.uint32), (p0 & _MASK32).astype(np.uint32)
            hi1, lo1 = (p1 >> _SHIFT32).astype(np.uint32), (p1 & _MASK32).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = np.uint32(k0 + _W0)
            k1 = np.uint32(k1 + _W1)
    return np.stack([c0, c1, c2, c3], axis=1)


def uniforms_from_words(words: np.ndarray) -> np.ndarray:
    """Map uint32 words to uniforms ``u = ((a >> 8) + 0.5) * 2**-24`` as float64: exact, strictly inside (0, 1).

    (The values need 25 significant bits above 0.5, so float32 cannot hold them all: rounding to float32 would map
    the top 256 words to exactly 1.0. They are kept in float64, where they are exact.)
    """
    return ((words >> np.uint32(8)).astype(np.float64) + 0.5) * 2.0**-24


def box_muller(words: np.ndarray) -> np.ndarray:
    """Four normals per Philox output ``[N, 4]`` -> float32 ``[N, 4]``.

    Pairs (u0, u1) and (u2, u3): ``r = sqrt(-2 ln uA)``, ``θ = 2π uB``, ``(r cos θ, r sin θ)``, evaluated in
    float64 and rounded once to float32.
    """
    u = uniforms_from_words(words)
    out = np.empty(u.shape, dtype=np.float64)
    for a in (0, 2):
        r = np.sqrt(-2.0 * np.log(u[:, a]))
        theta = 2.0 * np.pi * u[:, a + 1]
        out[:, a] = r * np.cos(theta)
        out[:, a + 1] = r * np.sin(theta)
    return out.astype(np.float32)


def image_key(pixels: np.ndarray) -> int:
    """Stable 64-bit key of an image: blake2b-64 over its dtype, shape and bytes.

    For the usual path ``pixels`` is the preprocessed (resized) uint8 ``[H, W, 3]`` array, so the same picture
    always gets the same noise, whatever batch it arrives in.
    """
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{pixels.dtype.str}:{','.join(map(str, pixels.shape))};".encode())
    digest.update(pixels.tobytes())
    return int.from_bytes(digest.digest(), "little")


def philox_key(seed: int, key: int) -> np.ndarray:
    """Philox key words for a run seed and an image key (both taken modulo 2**64)."""
    seed &= (1 << 64) - 1
    key &= (1 << 64) - 1
    return np.array([seed & 0xFFFFFFFF, ((seed >> 32) + (key >> 32)) & 0xFFFFFFFF], dtype=np.uint32)


def ensemble_normals(key: int, seed: int, ensemble_size: int, numel: int, stream: int) -> np.ndarray:
    """Standard normals for one image: float32 ``[E, numel]`` for stream ``stream``.

    ``numel`` is the latent size ``4 * h * w``; it is always a multiple of 4 for a 4-channel latent, and other
    sizes take the first ``numel`` normals of the last Philox block.
    """
    if ensemble_size < 1 or numel < 0:
        raise ValueError(f"ensemble_size must be >= 1 and numel >= 0, got {ensemble_size} and {numel}")
    groups = -(-numel // 4)
    j = np.arange(groups, dtype=np.uint32)
    counters = np.empty((ensemble_size, groups, 4), dtype=np.uint32)
    counters[..., 0] = j
    counters[..., 1] = np.arange(ensemble_size, dtype=np.uint32)[:, None]
    counters[..., 2] = np.uint32(stream)
    counters[..., 3] = np.uint32(key & 0xFFFFFFFF)
    words = philox4x32_10(counters.reshape(-1, 4), philox_key(seed, key))
    return box_muller(words).reshape(ensemble_size, groups * 4)[:, :numel]
