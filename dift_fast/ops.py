"""Public entry points of the ensemble ops: the native kernel when it is built, its pure-torch twin otherwise.

Both paths give identical results (tests check it); ``use_native=False`` forces the twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _torch_impl

__all__ = ["ensemble_latents", "ensemble_reduce"]


def ensemble_latents(
    mean: torch.Tensor,  # [B, 4, h, w]
    std: torch.Tensor,  # [B, 4, h, w]
    keys: Sequence[int],
    seed: int,
    ensemble_size: int,
    sqrt_alpha: float,
    sqrt_one_minus_alpha: float,
    scaling_factor: float,
    out_dtype: torch.dtype = torch.float32,
    use_native: bool | None = None,
) -> torch.Tensor:  # [B*E, 4, h, w]
    """Noised latents x_t of every ensemble member, drawn per the noise contract (spec §3)."""
    if mean.shape != std.shape or mean.ndim != 4:
        raise ValueError(f"mean and std must both be [B, C, h, w], got {list(mean.shape)} and {list(std.shape)}")
    if len(keys) != mean.shape[0]:
        raise ValueError(f"got {len(keys)} image keys for a batch of {mean.shape[0]}")
    return _torch_impl.ensemble_latents(
        mean, std, keys, seed, ensemble_size, sqrt_alpha, sqrt_one_minus_alpha, scaling_factor, out_dtype
    )


def ensemble_reduce(
    feats: torch.Tensor,  # [B*E, C, h, w]
    ensemble_size: int,
    normalized: bool = False,
    use_native: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean over the ensemble in float32 -> [B, C, h, w] (and optionally normalised [B, h, w, C])."""
    if feats.ndim != 4:
        raise ValueError(f"feats must be [B*E, C, h, w], got {list(feats.shape)}")
    return _torch_impl.ensemble_reduce(feats, ensemble_size, normalized)
