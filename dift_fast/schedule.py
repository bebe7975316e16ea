"""Forward-diffusion noise schedules: ᾱ_t and the coefficients of x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε.

Two schedules, each computed exactly as its model's reference code does:

- SD's diffusers scheduler configs (spec §1; "scaled_linear", float32 throughout): :func:`alphas_cumprod`,
  :func:`noise_coefficients`.
- guided-diffusion's "linear" schedule of the ADM models (spec §6): β = linspace(1e-4, 0.02, 1000) in float64,
  ᾱ_t and its square roots in float64, cast to float32 only when applied: :func:`linear_alphas_cumprod_float64`,
  :func:`linear_noise_coefficients`. (diffusers' own "linear" config computes the betas in float32; ᾱ_t then differs
  in the 7th digit, so the two are kept apart.)

Each backbone hands the extractor one :class:`NoiseSchedule`: :class:`DiffusersSchedule` (SD),
:class:`LinearSchedule` (ADM) or :class:`CleanSchedule` (CleanDIFT: no diffusion noise at all).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


def alphas_cumprod(config: dict[str, Any]) -> np.ndarray:
    """ᾱ_t as float32 ``[num_train_timesteps]`` from a diffusers scheduler config.

    Computed exactly as diffusers does (float32 betas, torch-equivalent cumprod in float32).

    Raises:
        ValueError: the config's schedule is unsupported or malformed (the key is named).
    """
    import torch

    try:
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    except (TypeError, ValueError):
        raise ValueError(
            "scheduler config: num_train_timesteps, beta_start and beta_end must be numbers, got "
            f"{config.get('num_train_timesteps')!r}, {config.get('beta_start')!r}, {config.get('beta_end')!r}"
        ) from None
    if n < 1:
        raise ValueError(f"scheduler config: num_train_timesteps must be >= 1, got {n}")
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"scheduler config: trained_betas must be a list of numbers, got shape {list(betas.shape)}")
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    else:
        raise ValueError(f"scheduler beta_schedule={kind!r} is not supported; use 'scaled_linear' or 'linear'")
    return torch.cumprod(1.0 - betas, dim=0).numpy()


def noise_coefficients(config: dict[str, Any], t: int) -> tuple[float, float]:
    """(√ᾱ_t, √(1−ᾱ_t)) as float32-rounded Python floats, as diffusers' ``add_noise`` computes them.

    Raises:
        ValueError: ``t`` is not one of the schedule's steps (e.g. a scheduler config with fewer steps than ``t``).
    """
    import torch

    table = alphas_cumprod(config)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < len(table):
        raise ValueError(
            f"t={t!r} is not a step of the model's noise schedule, which has {len(table)} steps (0..{len(table) - 1}; "
            "scheduler/scheduler_config.json, num_train_timesteps); choose a t in that range or use a scheduler "
            "config with more steps"
        )
    abar = torch.from_numpy(table)[int(t)]
    return float(abar**0.5), float((1 - abar) ** 0.5)


# guided-diffusion's linear schedule (Ho et al.), as the ADM checkpoints were trained with it.
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
LINEAR_NUM_TIMESTEPS = 1000


def linear_alphas_cumprod_float64(
    num_timesteps: int = LINEAR_NUM_TIMESTEPS,
    beta_start: float = LINEAR_BETA_START,
    beta_end: float = LINEAR_BETA_END,
) -> np.ndarray:
    """ᾱ_t as float64 ``[num_timesteps]`` for guided-diffusion's "linear" schedule.

    β = linspace(beta_start, beta_end, n) scaled by 1000 / n (guided-diffusion's rule, a no-op for 1000 steps),
    ᾱ_t = cumprod(1 − β), all in float64.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def linear_noise_coefficients(t: int, num_timesteps: int = LINEAR_NUM_TIMESTEPS) -> tuple[float, float]:
    """(√ᾱ_t, √(1−ᾱ_t)) of guided-diffusion's linear schedule, as its ``q_sample`` applies them.

    The square roots are taken in float64 and each is rounded once to float32 (guided-diffusion indexes float64
    tables and casts with ``.float()``); returned as Python floats holding those float32 values.
    """
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < num_timesteps:
        raise ValueError(f"t must be an integer timestep in [0, {num_timesteps - 1}], got {t!r}")
    abar = linear_alphas_cumprod_float64(num_timesteps)[int(t)]
    return float(np.float32(np.sqrt(abar))), float(np.float32(np.sqrt(1.0 - abar)))


# -- schedule objects: what a backbone hands the extractor ------------------------------------------------------


class NoiseSchedule(Protocol):
    """How a backbone noises its diffusion-space sample: x_t = a·x + b·ε with (a, b) = ``coefficients(t)``.

    ``adds_noise`` False means no diffusion noise is drawn at all (noise contract stream 1 unused) and the clean
    sample goes into the network unchanged; ``describe()`` is the JSON-ready record of the schedule (its name and
    every number that decides ᾱ_t), used in the feature identity.
    """

    adds_noise: bool

    def coefficients(self, t: int) -> tuple[float, float]: ...

    def describe(self) -> dict[str, Any]: ...


class DiffusersSchedule:
    """SD's forward-diffusion schedule from a diffusers scheduler config (float32, as diffusers' ``add_noise``)."""

    adds_noise = True

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        alphas_cumprod(self.config)  # an unsupported beta_schedule fails here, when the model is loaded

    def coefficients(self, t: int) -> tuple[float, float]:
        """(√ᾱ_t, √(1−ᾱ_t)) as float32-rounded Python floats."""
        return noise_coefficients(self.config, t)

    def describe(self) -> dict[str, Any]:
        """The settings that decide ᾱ_t (JSON-ready)."""
        out = {
            "name": "diffusers",
            "beta_schedule": self.config.get("beta_schedule", "linear"),
            "beta_start": float(self.config.get("beta_start", 0.0001)),
            "beta_end": float(self.config.get("beta_end", 0.02)),
            "num_train_timesteps": int(self.config.get("num_train_timesteps", 1000)),
            "precision": "float32",
            "adds_noise": True,
        }
        if self.config.get("trained_betas") is not None:
            out["trained_betas"] = [float(b) for b in self.config["trained_betas"]]
        return out


class LinearSchedule:
    """guided-diffusion's linear schedule of the ADM models, in float64 (:func:`linear_noise_coefficients`)."""

    adds_noise = True

    def __init__(self, num_timesteps: int = LINEAR_NUM_TIMESTEPS) -> None:
        linear_alphas_cumprod_float64(num_timesteps)  # validates num_timesteps
        self.num_timesteps = int(num_timesteps)

    def coefficients(self, t: int) -> tuple[float, float]:
        return linear_noise_coefficients(t, self.num_timesteps)

    def describe(self) -> dict[str, Any]:
        return {"name": "guided-diffusion-linear", "beta_start": LINEAR_BETA_START, "beta_end": LINEAR_BETA_END,
                "num_train_timesteps": self.num_timesteps, "precision": "float64", "adds_noise": True}


class CleanSchedule:
    """No forward diffusion: the clean sample goes into the network as it is, with the timestep as conditioning.

    CleanDIFT's features (spec §6): ``x = z0``; ``t`` still reaches the network's time embedding.
    """

    adds_noise = False

    def coefficients(self, t: int) -> tuple[float, float]:
        """(1, 0): x = 1·z0 + 0·ε, which is why no diffusion noise is drawn."""
        return 1.0, 0.0

    def describe(self) -> dict[str, Any]:
        return {"name": "clean", "adds_noise": False}
