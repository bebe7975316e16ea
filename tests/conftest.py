"""Shared fixtures: a tiny random-weight SD-2.x-shaped pipeline saved to a temp folder, built once per session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dift_fast


def _export_from_source_checkout() -> None:
    """Make ``dift_fast.export`` importable from a source checkout too (PYTHONPATH=. with nothing installed).

    An installed dift-fast maps the top-level ``export/`` folder to ``dift_fast.export``; a plain checkout has no
    such package, so it is registered here from the same folder (the files an install would map).
    """
    if importlib.util.find_spec("dift_fast.export") is not None:
        return
    folder = Path(__file__).resolve().parents[1] / "export"
    spec = importlib.util.spec_from_file_location("dift_fast.export", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dift_fast.export"] = module
    spec.loader.exec_module(module)
    dift_fast.export = module


_export_from_source_checkout()


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Everything dift-fast caches during the tests goes to a temp folder, never to the user's ~/.cache."""
    saved = os.environ.get("DIFT_FAST_CACHE")
    os.environ["DIFT_FAST_CACHE"] = str(tmp_path_factory.mktemp("dift-fast-cache"))
    yield
    if saved is None:
        os.environ.pop("DIFT_FAST_CACHE", None)
    else:
        os.environ["DIFT_FAST_CACHE"] = saved


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
        key = config.up_ft_index  # backends run placed copies and never move these: one set serves every dtype
        if key not in cache:
            cache[key] = load_components(config.model, None, config.up_ft_index)
        return DiftExtractor(cache[key], config)

    return make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on
    a shared 2-core machine two spinning OpenMP threads run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """One faiss OpenMP thread for a module: faiss' threads spin-wait, and on a busy 2-core box one thread is
    10-50x faster at the tests' sizes."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
