"""The forward-diffusion noise schedule (spec §1): ᾱ_t for the scheduler configs SD uses."""

from __future__ import annotations

from typing import Any

import numpy as np


def alphas_cumprod(config: dict[str, Any]) -> np.ndarray:
    """ᾱ_t as float32 ``[num_train_timesteps]`` from a diffusers scheduler config.

    Computed exactly as diffusers does (float32 betas, torch-equivalent cumprod in float32).
    """
    import torch

    n = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    else:
        raise ValueError(f"scheduler beta_schedule={kind!r} is not supported; use 'scaled_linear' or 'linear'")
    return torch.cumprod(1.0 - betas, dim=0).numpy()


def noise_coefficients(config: dict[str, Any], t: int) -> tuple[float, float]:
    """(√ᾱ_t, √(1−ᾱ_t)) as float32-rounded Python floats, as diffusers' ``add_noise`` computes them."""
    import torch

    abar = torch.from_numpy(alphas_cumprod(config))[t]
    return float(abar**0.5), float((1 - abar) ** 0.5)
