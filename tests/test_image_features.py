"""Sizes travel with the features: FeatureBatch[i], match_points/cosine_maps on ImageFeatures; one tiny-model test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast import DiftConfig
from dift_fast.backbones.registry import is_tiny_model
from dift_fast.matching import cosine_maps, match_points
from dift_fast.pair import ImageFeatures


def _images(rng, sizes):
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_feature_batch_items_are_image_features(tiny_extractor_factory, rng):
    ext = tiny_extractor_factory()
    batch = ext.extract_prepared(ext.prepare(_images(rng, [(70, 50), (40, 60)])))
    assert len(batch) == 2
    first, last = batch[0], batch[-1]
    assert isinstance(first, ImageFeatures) and first.original_size == (70, 50) and last.original_size == (40, 60)
    assert torch.equal(first.features, batch.features[0]) and first.name == batch.names[0]
    with pytest.raises(IndexError):
        batch[2]
    with pytest.raises(TypeError, match="image position"):
        batch[0:1]


def test_match_points_takes_sizes_from_image_features():
    gen = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(8, 6, 5, generator=gen), torch.randn(8, 4, 7, generator=gen)
    a, b = ImageFeatures(fa, "a", (50, 60)), ImageFeatures(fb, "b", (70, 40))
    pts = [[0, 0], [49, 59], [20, 31]]
    by_hand = match_points(fa, fb, pts, (50, 60), (70, 40))
    carried = match_points(a, b, pts)
    assert torch.equal(by_hand[0], carried[0]) and torch.equal(by_hand[1], carried[1])
    assert torch.equal(match_points(a, fb, pts, tgt_size=(70, 40))[0], by_hand[0])  # mixed: a tensor needs its size
    assert torch.equal(cosine_maps(a, b, pts), cosine_maps(fa, fb, pts, (50, 60), (70, 40)))
    with pytest.raises(TypeError, match="give its image's size"):
        match_points(fa, b, pts)
    with pytest.raises(ValueError, match="leave the size out"):
        match_points(a, b, pts, (60, 50))
    with pytest.raises(ValueError, match="outside the 50x60 image"):
        match_points(a, b, [[50, 0]])


def test_one_tiny_model_test_for_every_caller(tiny_model_dir, tmp_path):
    from dift_fast.tiny import build_tiny_adm

    adm_folder = build_tiny_adm(tmp_path / "adm")
    tiny = [
        DiftConfig.from_preset("spair", model="tiny-random"),
        DiftConfig.from_preset("spair", model=str(tiny_model_dir)),  # a folder made by build_tiny_pipeline
        DiftConfig.from_preset("adm-spair", model="tiny-random-adm"),
        DiftConfig.from_preset("adm-spair", model=str(adm_folder)),
    ]
    for config in tiny:
        assert is_tiny_model(config), config.model
    assert not is_tiny_model(DiftConfig.from_preset("spair"))  # the hub model: no network is touched
    assert not is_tiny_model(DiftConfig.from_preset("adm-spair", model="256x256_diffusion_uncond.pt"))


def test_store_of_a_tiny_model_folder_is_marked_tiny(tiny_model_dir, tmp_path):
    """A store records tiny_random for any tiny model, not only for the name 'tiny-random'."""
    from dift_fast.cli import main
    from dift_fast.store import FeatureStore

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(photos / "a.png")
    assert main(["extract", str(photos), "--out", str(tmp_path / "store"), "--model", str(tiny_model_dir),
                 "--ensemble-size", "1", "--image-size", "64x48", "--device", "cpu", "--no-progress"]) == 0
    assert FeatureStore.open(tmp_path / "store").meta["tiny_random"] is True
