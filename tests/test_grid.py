"""extract_grid: many (t, block) features from one pass per t, equal bit for bit to separate extractions (CPU).

Every backbone: SD (the tiny model), DIFT_adm (``tiny-random-adm``: pixel space, no text) and CleanDIFT (the tiny
CleanDIFT UNet: no diffusion noise, t only enters the network).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dift_fast import DiftConfig, DiftExtractor
from dift_fast.extractor import GridFeatureBatch, NonFiniteFeaturesError
from dift_fast.loading import load_components
from dift_fast.tiny import tiny_cleandift_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def make(tiny_model_dir):
    """``make(backbone, **overrides)``: an extractor on the tiny model of ``backbone``; components shared per block."""
    bases = {
        "sd": ("spair", {"model": str(tiny_model_dir), "ensemble_size": 2, "image_size": (64, 48)}),
        "adm": ("adm-spair", {"model": "tiny-random-adm", "ensemble_size": 2, "image_size": (64, 96)}),
        "cleandift": (
            "cleandift",
            {"model": str(tiny_model_dir), "unet_weights": str(tiny_cleandift_weights()), "image_size": (64, 48)},
        ),
    }
    cache: dict[tuple[str, int], object] = {}

    def build(backbone: str, **overrides) -> DiftExtractor:
        preset, base = bases[backbone]
        config = DiftConfig.from_preset(preset, **{**base, "device": "cpu", **overrides})
        key = (backbone, config.up_ft_index)
        if key not in cache:
            cache[key] = load_components(config)
        return DiftExtractor(cache[key], config)

    return build


def images(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


CASES = [
    # backbone, image size (W, H), timesteps, blocks
    ("sd", (64, 48), (0, 261, 999), (0, 1, 2, 3)),
    ("sd", (40, 56), (51, 500), (1, 3)),  # a 5x7 latent: every upsampler resizes to its skip's odd size
    ("adm", (64, 96), (1, 101, 700), (2, 4, 7)),
    ("adm", (32, 64), (41,), (0, 11)),
    ("cleandift", (64, 48), (0, 261, 900), (0, 1, 3)),
]


@pytest.mark.parametrize(("backbone", "size", "timesteps", "blocks"), CASES)
def test_grid_equals_separate_extractions_bit_for_bit(make, backbone, size, timesteps, blocks):
    pictures = images(3, size, seed=len(timesteps))
    # 3 images in micro-batches of 2: the third image sits at position 0 of the second micro-batch.
    grid_extractor = make(backbone, up_ft_index=max(blocks), image_size=size, batch_size=2)
    grid = grid_extractor.extract_grid(pictures, timesteps=timesteps, blocks=blocks)
    assert set(grid) == {(t, k) for t in timesteps for k in blocks}
    for t in timesteps:
        for k in blocks:
            single = make(backbone, t=t, up_ft_index=k, image_size=size, batch_size=1).extract(pictures)
            assert grid[(t, k)].shape == single.shape, (t, k)
            assert torch.equal(grid[(t, k)], single), f"{backbone}: t={t}, block {k}"


def test_grid_cells_differ_across_t_and_blocks(make):
    """Guards the test above: the cells it compares are not all the same map."""
    for backbone in ("sd", "adm", "cleandift"):
        size = (64, 96) if backbone == "adm" else (64, 48)
        blocks = (2, 4) if backbone == "adm" else (0, 1)
        grid = make(backbone, up_ft_index=max(blocks), image_size=size).extract_grid(
            images(1, size), timesteps=(0, 500), blocks=blocks
        )
        assert not torch.equal(grid[(0, blocks[1])], grid[(500, blocks[1])]), backbone  # t enters the network
        assert grid[(0, blocks[0])].shape != grid[(0, blocks[1])].shape or not torch.equal(
            grid[(0, blocks[0])], grid[(0, blocks[1])]
        )


def test_grid_at_any_batch_position_and_batch_size(make):
    pictures = images(5, (64, 48), seed=3)
    alone = make("sd", up_ft_index=2, batch_size=1).extract_grid(pictures[3:4], timesteps=(51, 261), blocks=(1, 2))
    for batch_size in (1, 2, 5):
        for pos in (0, 2, 4):
            shuffled = [*pictures[:3], *pictures[4:]]
            shuffled.insert(pos, pictures[3])
            grid = make("sd", up_ft_index=2, batch_size=batch_size).extract_grid(
                shuffled, timesteps=(51, 261), blocks=(1, 2)
            )
            for cell, feats in alone.items():
                assert torch.equal(grid[cell][pos], feats[0]), (cell, batch_size, pos)


def test_encoder_once_per_image_and_network_once_per_image_and_t(make, monkeypatch):
    ext = make("sd", up_ft_index=3, batch_size=2)
    encoded, passes = [], []
    encode, features = ext.backend.encode, ext.backend.features

    def counting_encode(x):
        encoded.append(x.shape[0])
        return encode(x)

    def counting_features(x, t, c, blocks=None):
        passes.append((x.shape[0], t, blocks))
        return features(x, t, c, blocks=blocks)

    monkeypatch.setattr(ext.backend, "encode", counting_encode)
    monkeypatch.setattr(ext.backend, "features", counting_features)
    fired = []
    for k in (2, 3):  # blocks deeper than the deepest requested one never run
        ext.backend.network.up_blocks[k].register_forward_hook(lambda m, i, o, k=k: fired.append(k))
    grid = ext.extract_grid(images(3, (64, 48)), timesteps=(0, 261, 999), blocks=(0, 1))
    assert sum(encoded) == 3  # the VAE once per image, for all three timesteps
    # the network once per (image, t) -- image by image on the CPU -- with E = 2 rows, both blocks from one pass
    assert sorted(passes) == sorted((2, t, (0, 1)) for t in (0, 261, 999) for _ in range(3))
    assert fired == [] and len(grid) == 6


def test_explicit_noise_is_shared_by_every_cell(make):
    pictures = images(2, (64, 48), seed=5)
    g = torch.Generator().manual_seed(0)
    noise = (torch.randn(2, 2, 4, 6, 8, generator=g), torch.randn(2, 2, 4, 6, 8, generator=g))
    grid = make("sd", up_ft_index=2).extract_grid(pictures, timesteps=(0, 700), blocks=(0, 2), noise=noise)
    for (t, k), feats in grid.items():
        assert torch.equal(feats, make("sd", t=t, up_ft_index=k).extract(pictures, noise=noise)), (t, k)
    contract = make("sd", up_ft_index=2).extract_grid(pictures, timesteps=(0, 700), blocks=(0, 2))
    assert not torch.equal(contract[(700, 2)], grid[(700, 2)])  # the explicit noise was used


def test_prepared_grid_carries_names_sizes_and_keys(make):
    ext = make("sd", up_ft_index=1)
    prepared = ext.prepare(images(2, (70, 50)))
    batch = ext.extract_grid_prepared(prepared, timesteps=(261,), blocks=(0, 1))
    assert isinstance(batch, GridFeatureBatch) and batch.cells == [(261, 0), (261, 1)]
    one = batch.cell(261, 1)
    assert one.names == [p.name for p in prepared] and one.original_sizes == [(70, 50), (70, 50)]
    assert one.image_keys == [p.key for p in prepared]
    assert torch.equal(one.features, ext.extract_prepared(prepared).features)
    with pytest.raises(KeyError, match=r"cell \(t=0, block=1\) was not extracted"):
        batch.cell(0, 1)
    # explicit cells: not a product; each t's pass runs to its own deepest block
    ragged = ext.extract_grid_prepared(prepared, cells=[(261, 1), (0, 0)])
    assert ragged.cells == [(261, 1), (0, 0)]
    assert torch.equal(ragged.features[(261, 1)], batch.features[(261, 1)])


def test_bad_grids_are_refused_with_the_fix(make, monkeypatch):
    ext = make("sd", up_ft_index=1)
    pictures = images(1, (64, 48))
    with pytest.raises(ValueError, match=r"block 3 is deeper .* up_ft_index=3\)"):
        ext.extract_grid(pictures, timesteps=(261,), blocks=(1, 3))
    with pytest.raises(ValueError, match=r"timestep 1000 is invalid: allowed are integers 0\.\.999"):
        ext.extract_grid(pictures, timesteps=(0, 1000), blocks=(1,))
    with pytest.raises(ValueError, match=r"block 5 is not a feature block of backbone 'sd'"):
        ext.extract_grid(pictures, timesteps=(0,), blocks=(5,))
    with pytest.raises(ValueError, match="the grid is empty"):
        ext.extract_grid(pictures, timesteps=(), blocks=(1,))
    with pytest.raises(ValueError, match="either cells or timesteps"):
        ext.extract_grid_prepared(ext.prepare(pictures), timesteps=(0,), cells=[(0, 1)])
    # a backend whose features() takes no blocks (an ONNX export): a grid over t only, at its own block
    plain = ext.backend.features
    monkeypatch.setattr(ext.backend, "features", lambda x, t, c: plain(x, t, c))
    with pytest.raises(ValueError, match=r"returns block 1 only, so blocks \[0\].*backend='torch'"):
        ext.extract_grid(pictures, timesteps=(0,), blocks=(0, 1))
    over_t = ext.extract_grid(pictures, timesteps=(0, 261), blocks=(1,))
    assert torch.equal(over_t[(261, 1)], ext.extract(pictures))


def test_non_finite_grid_names_the_cell(make):
    ext = make("sd", up_ft_index=1)
    shape = (1, 2, 4, 6, 8)
    bad = torch.full(shape, float("inf"))
    with pytest.raises(NonFiniteFeaturesError, match=r"at t=0, block 0"):
        ext.extract_grid(images(1, (64, 48)), timesteps=(0, 261), blocks=(0, 1), noise=(bad, torch.zeros(shape)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_grid_equals_separate_extractions_on_cuda(tiny_model_dir, monkeypatch):
    # fp32 means fp32 here (cuDNN defaults to TF32 convolutions); monkeypatch restores the settings afterwards
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    base = {
        "model": str(tiny_model_dir),
        "ensemble_size": 2,
        "image_size": (64, 48),
        "device": "cuda",
        "dtype": "fp32",
        "batch_size": 2,
    }
    comps = {k: load_components(DiftConfig.from_preset("spair", **base, up_ft_index=k)) for k in (0, 1, 2)}
    pictures = images(3, (64, 48))
    grid = DiftExtractor(comps[2], DiftConfig.from_preset("spair", **base, up_ft_index=2)).extract_grid(
        pictures, timesteps=(0, 261), blocks=(0, 1, 2)
    )
    for (t, k), feats in grid.items():
        single = DiftExtractor(comps[k], DiftConfig.from_preset("spair", **base, t=t, up_ft_index=k)).extract(pictures)
        # The same kernels on the same shapes; only cuDNN's choice of algorithm may differ between the two
        # networks (truncated after different blocks), which reorders fp32 sums: ~1e-7 relative per op, ~1e-6
        # over the tiny model's ~20 layers. 1e-5 leaves a margin while catching any wrong noise, t or block.
        rel = float((feats.double() - single.double()).norm() / single.double().norm())
        assert rel <= 1e-5, ((t, k), rel)
