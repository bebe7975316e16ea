"""DIFT_adm: guided-diffusion checkpoint -> diffusers UNet2DModel conversion, truncated network, loading, costs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from adm_reference import gd_layout, output_block_features, random_state

from dift_fast.backbones import adm as adm_mod
from dift_fast.backbones.adm import adm_config, adm_features, build_adm_unet, converted_cache_path, load_adm_unet
from dift_fast.backbones.adm_convert import convert_adm_state_dict
from dift_fast.backbones.adm_network import TruncatedADM, adm_block
from dift_fast.backbones.weights import WeightsError

# A tiny model of the same family: 4 levels (2 plain, 2 with attention), resblock up/down, 2..4 heads of 16 channels.
TINY_CONFIG = {
    "_class_name": "UNet2DModel",
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 6,
    "layers_per_block": 2,
    "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"],
    "attention_head_dim": 16,
    "attn_norm_num_groups": 32,
    "norm_num_groups": 32,
    "resnet_time_scale_shift": "scale_shift",
    "upsample_type": "resnet",
    "downsample_type": "resnet",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
# The same model in guided-diffusion's terms: attention at downsample rates 4 and 8 (levels 2 and 3).
TINY_GD = {
    "model_channels": 32,
    "channel_mult": (1, 1, 2, 2),
    "num_res_blocks": 2,
    "attention_ds": {4, 8},
    "head_channels": 16,
}
# The real 256x256 unconditional model (guided-diffusion README flags: attention_resolutions 32,16,8 of 256 px).
REAL_GD = {
    "model_channels": 256,
    "channel_mult": (1, 1, 2, 2, 4, 4),
    "num_res_blocks": 2,
    "attention_ds": {8, 16, 32},
    "head_channels": 64,
}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny():
    """(layout, guided-diffusion state dict, converted UNet2DModel) of the tiny model, fp32."""
    torch.manual_seed(0)
    layout = gd_layout(**TINY_GD)
    state = random_state(layout, seed=1)
    unet = build_adm_unet(TINY_CONFIG, device="cpu")
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    unet.load_state_dict(convert_adm_state_dict(state, TINY_CONFIG, shapes, source="tiny.pt"), strict=True)
    return layout, state, unet.eval().requires_grad_(False)


def _save_pt(path, state):
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- conversion against the reference forward


def test_every_output_block_matches_the_guided_diffusion_reference(tiny):
    layout, state, unet = tiny
    x = torch.randn(2, 3, 24, 32)  # W != H, so a swapped axis would show
    t = 101
    with torch.no_grad():
        expected = output_block_features(layout, state, x, t)
        assert len(expected) == 12
        for k in range(12):
            got = TruncatedADM(unet, k)(x, t)
            assert got.shape == expected[k].shape, k
            # fp32, different but equivalent op orders (SDPA vs. pre-scaled einsum softmax): ~1e-7 observed
            assert rel_l2(got, expected[k]) <= 1e-5, (k, rel_l2(got, expected[k]))


def test_qkv_split_per_head_matters(tiny, monkeypatch):
    """A naive three-equal-chunks split of the fused qkv gives clearly different features (the test can fail)."""
    from dift_fast.backbones import adm_convert

    layout, state, _unet = tiny

    def chunk_split(fused, head_dim):
        return tuple(c.contiguous() for c in fused.chunk(3, dim=0))

    monkeypatch.setattr(adm_convert, "_split_qkv", chunk_split)
    naive = build_adm_unet(TINY_CONFIG, device="cpu")
    shapes = {k: tuple(v.shape) for k, v in naive.state_dict().items()}
    naive.load_state_dict(convert_adm_state_dict(state, TINY_CONFIG, shapes), strict=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = output_block_features(layout, state, x, 51)[1]
        assert rel_l2(TruncatedADM(naive.eval(), 1)(x, 51), expected) > 1e-2


def _split_reference(fused: torch.Tensor, head: int = 16):
    """q, k, v of a legacy fused qkv, by explicit per-head channel indices (channel h·3d + s·d + c)."""
    w = fused.reshape(fused.shape[0], -1)
    c = w.shape[0] // 3
    idx = [[h * 3 * head + s * head + i for h in range(c // head) for i in range(head)] for s in range(3)]
    out = [w[i] for i in idx]
    return [o.squeeze(-1) if fused.ndim == 1 else o for o in out]


def test_converter_splits_qkv_per_head_by_explicit_indices(tiny):
    _layout, state, unet = tiny
    converted = convert_adm_state_dict(state, TINY_CONFIG, {k: tuple(v.shape) for k, v in unet.state_dict().items()})
    for p in ("weight", "bias"):
        q, k, v = _split_reference(state[f"middle_block.1.qkv.{p}"])
        assert torch.equal(converted[f"mid_block.attentions.0.to_q.{p}"], q)
        assert torch.equal(converted[f"mid_block.attentions.0.to_k.{p}"], k)
        assert torch.equal(converted[f"mid_block.attentions.0.to_v.{p}"], v)


# ---------------------------------------------------------------- the real architecture, shapes only


@pytest.fixture(scope="module")
def real_meta():
    return build_adm_unet(adm_config(), device="meta")


def test_real_architecture_key_mapping_on_meta_tensors(real_meta):
    layout = gd_layout(**REAL_GD)
    # The test's own enumeration of guided-diffusion's keys holds the spec's parameter count (independent check).
    assert sum(int(np.prod(s)) for s in layout.shapes.values()) == 552_814_086
    state = {k: torch.empty(s, device="meta") for k, s in layout.shapes.items()}
    shapes = {k: tuple(v.shape) for k, v in real_meta.state_dict().items()}
    converted = convert_adm_state_dict(state, adm_config(), shapes, source="256x256_diffusion_uncond.pt")
    assert converted.keys() == shapes.keys()
    assert all(tuple(v.shape) == shapes[k] for k, v in converted.items())
    # spot checks of the spec's mapping on the real numbering
    assert (
        converted["down_blocks.2.downsamplers.0.conv1.weight"].shape
        == layout.shapes["input_blocks.9.0.in_layers.2.weight"]
    )
    assert (
        converted["up_blocks.0.upsamplers.0.conv2.weight"].shape
        == layout.shapes["output_blocks.2.2.out_layers.3.weight"]
    )
    assert (
        converted["up_blocks.3.upsamplers.0.conv2.weight"].shape
        == layout.shapes["output_blocks.11.1.out_layers.3.weight"]
    )
    assert converted["up_blocks.1.attentions.1.to_q.weight"].shape == (1024, 1024)


def test_real_block_numbering_matches_the_spec(real_meta):
    config = adm_config()
    block4 = adm_block(config, 4)  # spec §6: block 4 = up_blocks[1] after resnets[1] + attentions[1]; 1024 ch, /16
    assert (block4.level, block4.resnet, block4.upsample, block4.channels, block4.stride) == (1, 1, False, 1024, 16)
    with torch.no_grad():
        for k in (0, 2, 4, 7, 11, 17):
            out = TruncatedADM(real_meta, k)(torch.empty(1, 3, 256, 192, device="meta"), 101)
            info = adm_block(config, k)
            assert out.shape == (1, info.channels, 256 // info.stride, 192 // info.stride), k
    with pytest.raises(ValueError, match=r"0\.\.17"):
        adm_block(config, 18)


def test_costs_match_the_spec():
    from dift_fast.backbones.adm_costs import measure_adm_costs

    report = measure_adm_costs((512, 512), 4)
    assert report.total_parameters == 552_814_086  # spec §6 (exact)
    assert round(report.truncated_parameters / 1e6, 1) == 415.5  # issue 15: 415.5 M up to block 4
    assert round(report.flops / 1e12, 1) == 2.6  # spec §6: ≈ 2.6 TFLOP per 512² image per member to block 4
    assert report.per_image(8) == 8 * report.flops


# ---------------------------------------------------------------- truncated network == full UNet2DModel


def _hook_module(unet, info):
    block = unet.up_blocks[info.level]
    if info.upsample:
        return block.upsamplers[0]
    if getattr(block, "attentions", None) is not None:
        return block.attentions[info.resnet]
    return block.resnets[info.resnet]


@pytest.mark.parametrize("k", range(12))
def test_truncated_equals_full_unet_at_the_hooked_block(tiny, k):
    _, _, unet = tiny
    x = torch.randn(2, 3, 16, 24)
    captured = {}
    handle = _hook_module(unet, adm_block(unet.config, k)).register_forward_hook(
        lambda mod, args, out: captured.setdefault("out", out)
    )
    try:
        with torch.no_grad():
            unet(x, 41)
            got = TruncatedADM(unet, k)(x, torch.tensor(41))
    finally:
        handle.remove()
    torch.testing.assert_close(got, captured["out"], rtol=0, atol=0)  # the same modules in the same order


def test_truncated_keeps_nothing_after_the_block(tiny):
    _, _, unet = tiny
    net = TruncatedADM(unet, 4)  # level 1, resnet 1 (+ attention), no upsampler
    kept = {id(p) for p in net.parameters()}
    up1 = unet.up_blocks[1]
    assert all(id(p) not in kept for p in up1.resnets[2].parameters())
    assert all(id(p) not in kept for p in up1.upsamplers[0].parameters())
    assert all(
        id(p) not in kept for m in (unet.up_blocks[2], unet.conv_norm_out, unet.conv_out) for p in m.parameters()
    )
    assert all(id(p) in kept for p in up1.attentions[1].parameters())


def test_sizes_must_be_multiples_of_the_downsampling(tiny):
    _, _, unet = tiny
    with pytest.raises(ValueError, match="not a multiple of 8"):
        TruncatedADM(unet, 0)(torch.zeros(1, 3, 20, 16), 1)


def test_features_follow_dift_adm_semantics(tiny):
    """x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε with float64 ᾱ, raw t, block k averaged over E (DIFT's ADMFeaturizer.forward)."""
    layout, state, unet = tiny
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(2, 3, 3, 16, 16)
    t, k = 101, 4
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t]
    a, b = torch.tensor(np.sqrt(abar)).float(), torch.tensor(np.sqrt(1 - abar)).float()
    with torch.no_grad():
        got = adm_features(TruncatedADM(unet, k), images, t, noise)
        expected = torch.stack(
            [output_block_features(layout, state, a * images[i] + b * noise[i], t)[k].mean(0) for i in range(2)]
        )
    assert rel_l2(got, expected) <= 1e-5  # fp32 op-order differences only
    with pytest.raises(ValueError, match="noise must be"):
        adm_features(TruncatedADM(unet, k), images, t, noise[:, :, :2])


# ---------------------------------------------------------------- loading, cache, bad weights


def test_load_pt_converts_and_caches(tiny, tmp_path, monkeypatch):
    _layout, state, unet = tiny
    ckpt = _save_pt(tmp_path / "adm.pt", state)
    os.utime(ckpt, ns=(1_600_000_000 * 10**9,) * 2)  # old enough for the hash cache
    loaded = load_adm_unet(ckpt, config=TINY_CONFIG)
    for key, value in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    from dift_fast.hashing import file_sha256

    cached = converted_cache_path(file_sha256(ckpt))
    assert cached.is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds it")

    monkeypatch.setattr(adm_mod, "convert_adm_state_dict", no_conversion)
    again = load_adm_unet(ckpt, config=TINY_CONFIG, dtype=torch.float16)
    assert again.conv_in.weight.dtype == torch.float16
    assert torch.equal(again.conv_in.weight, unet.conv_in.weight.half())
    assert not any(p.requires_grad for p in again.parameters())


def test_corrupt_cache_entry_is_rebuilt(tiny, tmp_path):
    _, state, unet = tiny
    ckpt = _save_pt(tmp_path / "adm.pt", state)
    load_adm_unet(ckpt, config=TINY_CONFIG)
    from dift_fast.hashing import file_sha256

    cached = converted_cache_path(file_sha256(ckpt))
    cached.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    loaded = load_adm_unet(ckpt, config=TINY_CONFIG)
    assert torch.equal(loaded.conv_in.weight, unet.conv_in.weight)
    assert cached.stat().st_size > 1000  # rewritten with the real weights


def test_load_safetensors_in_either_layout(tiny, tmp_path):
    from safetensors.torch import save_file

    _, state, unet = tiny
    save_file(state, str(tmp_path / "gd.safetensors"))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp_path / "converted.safetensors"))
    for name in ("gd.safetensors", "converted.safetensors"):
        loaded = load_adm_unet(tmp_path / name, config=TINY_CONFIG)
        assert torch.equal(loaded.up_blocks[1].attentions[0].to_k.weight, unet.up_blocks[1].attentions[0].to_k.weight)
    cached = sorted(p.name for p in (tmp_path / "cache" / "adm").iterdir())
    assert len(cached) == 1  # the guided-diffusion layout was converted and cached; the converted one needs neither


def test_missing_key_is_named(tiny, tmp_path):
    _, state, _ = tiny
    bad = {k: v for k, v in state.items() if k != "output_blocks.4.1.qkv.weight"}
    ckpt = _save_pt(tmp_path / "missing.pt", bad)
    with pytest.raises(WeightsError, match=r"missing\.pt.*missing keys: output_blocks\.4\.1\.qkv\.weight"):
        load_adm_unet(ckpt, config=TINY_CONFIG, use_cache=False)


def test_wrong_shape_is_named(tiny, tmp_path):
    _, state, _ = tiny
    bad = dict(state)
    bad["input_blocks.1.0.in_layers.2.weight"] = torch.zeros(32, 32, 1, 1)
    ckpt = _save_pt(tmp_path / "shape.pt", bad)
    with pytest.raises(
        WeightsError, match=r"shape\.pt.*wrong shapes: input_blocks\.1\.0\.in_layers\.2\.weight \(32, 32, 1, 1\)"
    ):
        load_adm_unet(ckpt, config=TINY_CONFIG, use_cache=False)


def test_integer_weights_are_refused(tiny, tmp_path):
    _, state, _ = tiny
    ckpt = _save_pt(tmp_path / "int.pt", {**state, "out.2.bias": torch.zeros(6, dtype=torch.int32)})
    with pytest.raises(WeightsError, match=r"int\.pt: non-floating-point weights for out\.2\.bias"):
        load_adm_unet(ckpt, config=TINY_CONFIG)
    assert not (tmp_path / "cache" / "adm").exists()  # nothing cached from a refused file


def test_unexpected_key_is_named_with_a_hint(tiny, tmp_path):
    _, state, _ = tiny
    ckpt = _save_pt(tmp_path / "cond.pt", {**state, "label_emb.weight": torch.zeros(1000, 128)})
    with pytest.raises(WeightsError, match=r"unexpected keys: label_emb\.weight.*class-conditional"):
        load_adm_unet(ckpt, config=TINY_CONFIG, use_cache=False)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_is_refused_and_never_run(tiny, tmp_path, writer):
    _, state, _ = tiny
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "evil.pt"
    payload = {**state, "payload": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(payload, f)
    # torch's refusal names the blocked global (os.system) for torch.save files; for a raw protocol-4 pickle it
    # stops earlier, at an opcode it does not accept. Either way nothing is unpickled.
    reason = r"system" if writer == "torch.save" else r"Unsupported"
    with pytest.raises(WeightsError, match=rf"refusing to load .*evil\.pt.*{reason}"):
        load_adm_unet(ckpt, config=TINY_CONFIG)
    assert not marker.exists()


def test_not_a_state_dict_and_garbage_are_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"list\.pt holds a list"):
        load_adm_unet(tmp_path / "list.pt", config=TINY_CONFIG, use_cache=False)
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "nested.pt")
    with pytest.raises(WeightsError, match=r"nested\.pt is not a flat state dict"):
        load_adm_unet(tmp_path / "nested.pt", config=TINY_CONFIG, use_cache=False)
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(WeightsError, match=r"junk\.pt"):
        load_adm_unet(tmp_path / "junk.pt", config=TINY_CONFIG, use_cache=False)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(WeightsError, match=r"junk\.safetensors is not a readable safetensors file"):
        load_adm_unet(tmp_path / "junk.safetensors", config=TINY_CONFIG, use_cache=False)
    with pytest.raises(WeightsError, match=r"256x256_diffusion_uncond\.pt from https://"):
        load_adm_unet(tmp_path / "absent.pt", config=TINY_CONFIG)


@pytest.mark.slow
def test_real_size_random_checkpoint_end_to_end(tmp_path):
    """A real-size guided-diffusion checkpoint (random weights, 2.2 GB) through torch.save, conversion and block 4."""
    layout = gd_layout(**REAL_GD)
    state = random_state(layout, seed=3)
    ckpt = _save_pt(tmp_path / "256x256_diffusion_uncond.pt", state)
    unet = load_adm_unet(ckpt)
    assert sum(p.numel() for p in unet.parameters()) == 552_814_086
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        got = TruncatedADM(unet, 4)(x, 101)
        expected = output_block_features(layout, state, x, 101)[4]
    assert got.shape == (1, 1024, 4, 6)
    assert rel_l2(got, expected) <= 1e-5  # fp32, op-order differences only
