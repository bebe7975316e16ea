"""Pure-torch twins of the native kernels in ``kernels/``: the fallback and the test oracle.

Each function computes exactly what its kernel computes, in the same float32 operation order, so the two agree
bit for bit on the CPU (the CUDA kernel avoids fused multiply-adds for the same reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .noise import DIFFUSION_STREAM, POSTERIOR_STREAM, ensemble_normals
from .transfer import to_device


def ensemble_noise(
    keys: Sequence[int], seed: int, ensemble_size: int, latent_shape: Sequence[int], stream: int
) -> torch.Tensor:  # [B, E, *latent_shape] float32 (CPU)
    """Twin of the noise part of ``ensemble_latents``: the contract's normals for each image key."""
    numel = int(np.prod(latent_shape))
    out = (
        np.stack([ensemble_normals(k, seed, ensemble_size, numel, stream) for k in keys])
        if keys
        else np.zeros((0, ensemble_size, numel), np.float32)
    )
    return torch.from_numpy(out).reshape(len(keys), ensemble_size, *latent_shape)


def combine_latents(
    mean: torch.Tensor,  # [B, C, h, w] float32
    std: torch.Tensor | None,  # [B, C, h, w] float32; None without posterior noise
    eps_posterior: torch.Tensor | None,  # [B, E, C, h, w] float32; None: no posterior noise (no encoder)
    eps_diffusion: torch.Tensor | None,  # [B, E, C, h, w] float32; None: no diffusion noise
    sqrt_alpha: float,
    sqrt_one_minus_alpha: float,
    scaling_factor: float,
    ensemble_size: int | None = None,
) -> torch.Tensor:  # [B*E, C, h, w] float32
    """z0 = (μ + σ·ε₁)·s;  x_t = √ᾱ·z0 + √(1−ᾱ)·ε₂, one rounding per operation.

    Without posterior noise (``eps_posterior`` None, a backbone without an encoder) z0 = μ·s; without diffusion
    noise (``eps_diffusion`` None, a schedule that adds none) x_t = z0. ``ensemble_size`` is needed only when both
    are None (it is otherwise the noise's E).
    """
    given = eps_posterior if eps_posterior is not None else eps_diffusion
    e = given.shape[1] if given is not None else ensemble_size
    if e is None:
        raise ValueError("combine_latents without noise needs ensemble_size")
    if eps_posterior is not None:
        z0 = (mean[:, None] + std[:, None] * eps_posterior) * scaling_factor
    else:
        z0 = (mean * scaling_factor)[:, None].expand(-1, e, *mean.shape[1:])
    x_t = sqrt_alpha * z0 + sqrt_one_minus_alpha * eps_diffusion if eps_diffusion is not None else z0
    return x_t.flatten(0, 1)


def ensemble_latents(
    mean: torch.Tensor,  # [B, C, h, w]
    std: torch.Tensor | None,  # [B, C, h, w]; unused without posterior noise
    keys: Sequence[int],
    seed: int,
    ensemble_size: int,
    sqrt_alpha: float,
    sqrt_one_minus_alpha: float,
    scaling_factor: float,
    out_dtype: torch.dtype = torch.float32,
    posterior_noise: bool = True,
    diffusion_noise: bool = True,
) -> torch.Tensor:  # [B*E, C, h, w] in out_dtype
    """Twin of the ``ensemble_latents`` kernel: contract noise drawn and combined, cast once to ``out_dtype``.

    Only the streams that exist are drawn: stream 0 (posterior) when ``posterior_noise``, stream 1 (diffusion)
    when ``diffusion_noise`` (see :func:`combine_latents` for what a missing stream means).
    """
    shape = tuple(mean.shape[1:])
    # drawn on the host; to a GPU through pinned memory, queued without a host wait (dift_fast.transfer)
    eps1 = to_device(ensemble_noise(keys, seed, ensemble_size, shape, POSTERIOR_STREAM), mean.device) \
        if posterior_noise else None
    eps2 = to_device(ensemble_noise(keys, seed, ensemble_size, shape, DIFFUSION_STREAM), mean.device) \
        if diffusion_noise else None
    x_t = combine_latents(mean.float(), std.float() if posterior_noise else None, eps1, eps2, sqrt_alpha,
                          sqrt_one_minus_alpha, scaling_factor, ensemble_size)
    return x_t.to(out_dtype)


def ensemble_reduce(
    feats: torch.Tensor,  # [B*E, C, h, w]
    ensemble_size: int,
) -> torch.Tensor:  # [B, C, h, w] float32
    """Twin of the ``ensemble_reduce`` kernel: mean over E with float32 accumulation.

    Members are summed in order e = 0..E-1 and divided by E once. The mean is contiguous NCHW whatever the
    layout of ``feats`` (channels-last features give the same values, and the same norm after).
    """
    n, c, h, w = feats.shape
    if n % ensemble_size:
        raise ValueError(f"feats has {n} samples, not a multiple of ensemble_size={ensemble_size}")
    grouped = feats.reshape(n // ensemble_size, ensemble_size, c, h, w)
    acc = grouped[:, 0].float().clone()
    for e in range(1, ensemble_size):
        acc += grouped[:, e].float()
    return (acc / ensemble_size).contiguous()


def ensemble_reduce_normalized(
    feats: torch.Tensor,  # [B*E, C, h, w]
    ensemble_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # [B, C, h, w], [B, h, w, C] float32
    """Twin of the ``ensemble_reduce`` kernel with normalisation: the mean and the mean divided by its L2 norm
    over C (clamped at 1e-12, so zero vectors stay zero) in channels-last layout."""
    mean = ensemble_reduce(feats, ensemble_size)
    norm = torch.linalg.vector_norm(mean, dim=1, keepdim=True).clamp_min(1e-12)
    return mean, (mean / norm).permute(0, 2, 3, 1).contiguous()
