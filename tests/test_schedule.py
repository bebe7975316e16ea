"""Noise schedules: guided-diffusion's float64 linear schedule (ADM) next to SD's scaled-linear one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dift_fast.schedule import alphas_cumprod, linear_alphas_cumprod_float64, linear_noise_coefficients


def _abar_by_loop(t: int) -> float:
    """ᾱ_t = Π_{i<=t} (1 − β_i), β_i = 1e-4 + i·(0.02 − 1e-4)/999, one step at a time in Python floats."""
    product = 1.0
    for i in range(t + 1):
        product *= 1.0 - (1e-4 + i * (0.02 - 1e-4) / 999)
    return product


def test_linear_schedule_matches_an_independent_float64_computation():
    abar = linear_alphas_cumprod_float64()
    assert abar.dtype == np.float64 and abar.shape == (1000,)
    for t in (0, 1, 41, 51, 101, 261, 500, 999):
        # float64 linspace vs. explicit β_i: rounding of the last bits, amplified at most ~1000x by the product
        assert abar[t] == pytest.approx(_abar_by_loop(t), rel=1e-12), t


def test_linear_schedule_matches_published_values():
    """Printouts of DDPM's linear-schedule ᾱ (β 1e-4..0.02, 1000 steps) in public notebooks: 5 significant digits."""
    abar = linear_alphas_cumprod_float64()
    published = {0: 9.9990e-01, 1: 9.9978e-01, 2: 9.9964e-01, 3: 9.9948e-01, 998: 4.1182e-05, 999: 4.0358e-05}
    for t, value in published.items():
        assert abar[t] == pytest.approx(value, rel=6e-5), t  # half a unit in the 5th digit


def test_linear_coefficients_are_float64_roots_rounded_once_to_float32():
    t = 101
    abar = _abar_by_loop(t)
    a, b = linear_noise_coefficients(t)
    assert a == float(np.float32(math.sqrt(abar)))
    assert b == float(np.float32(math.sqrt(1.0 - abar)))
    assert a**2 + b**2 == pytest.approx(1.0, abs=1e-6)  # float32 rounding of each root


def test_linear_schedule_is_not_diffusers_float32_linear():
    """diffusers' "linear" config builds β in float32; the ADM schedule must not be that one (they differ)."""
    f32 = alphas_cumprod({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000})
    f64 = linear_alphas_cumprod_float64()
    assert np.abs(f32.astype(np.float64) - f64).max() > 0  # the distinction is real
    assert np.abs(f32.astype(np.float64) - f64).max() < 1e-5  # and small: same schedule, different precision


@pytest.mark.parametrize("t", [-1, 1000, 1.5, True, "3"])
def test_linear_coefficients_reject_bad_timesteps(t):
    with pytest.raises(ValueError, match="t must be an integer timestep"):
        linear_noise_coefficients(t)
