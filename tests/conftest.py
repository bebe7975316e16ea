"""Shared fixtures: a tiny random-weight SD-2.x-shaped pipeline saved to a temp folder, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny random diffusers pipeline (unet, vae, text_encoder, tokenizer, scheduler)."""
    pytest.importorskip("diffusers", reason="the tiny model needs diffusers (a dependency: pip install diffusers)")
    from dift_fast.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


@pytest.fixture(scope="session")
def tiny_extractor_factory(tiny_model_dir):
    """Build extractors on the tiny model; components are loaded once and shared (read-only)."""
    from dift_fast import DiftConfig, DiftExtractor
    from dift_fast.loading import load_components

    cache = {}

    def make(**overrides):
        config = DiftConfig.from_preset(
            "spair",
            **{"model": str(tiny_model_dir), "ensemble_size": 2, "image_size": (64, 48), "device": "cpu", **overrides},
        )
        key = (config.up_ft_index, config.dtype)  # backends cast modules in place: one copy per dtype
        if key not in cache:
            cache[key] = load_components(config.model, None, config.up_ft_index)
        return DiftExtractor(cache[key], config)

    return make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
