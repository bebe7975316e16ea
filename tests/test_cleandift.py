"""CleanDIFT: replacing an SD UNet's weights from a 16-bit safetensors state dict (local file or hub spec)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dift_fast.backbones.cleandift import CLEANDIFT_UNET_WEIGHTS, load_unet_weights
from dift_fast.backbones.hub import split_hub_file
from dift_fast.backbones.weights import WeightsError
from dift_fast.tiny import tiny_component_configs
from dift_fast.unet import TruncatedUNet


def _unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_component_configs()["unet"]).eval()


@pytest.fixture(scope="module")
def source():
    """A tiny SD-shaped UNet standing in for CleanDIFT's fine-tuned one, and its state dict in fp16."""
    unet = _unet(seed=1)
    return unet, {k: v.half().contiguous() for k, v in unet.state_dict().items()}


def _snapshot(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_fp16_file_loads_into_the_requested_dtype(source, tmp_path):
    _, half = source
    save_file(half, str(tmp_path / "cleandift_sd21_unet.safetensors"))
    for dtype in (torch.float32, torch.bfloat16):
        target = _unet(seed=2)
        path = load_unet_weights(target, tmp_path / "cleandift_sd21_unet.safetensors", dtype=dtype)
        assert path == tmp_path / "cleandift_sd21_unet.safetensors"
        for key, value in target.state_dict().items():
            assert value.dtype == dtype, key
            assert torch.equal(value, half[key].to(dtype)), key  # one cast from the file's fp16


def test_default_dtype_is_the_unets(source, tmp_path):
    _, half = source
    save_file(half, str(tmp_path / "w.safetensors"))
    target = _unet(seed=2)
    load_unet_weights(target, str(tmp_path / "w.safetensors"))
    assert target.conv_in.weight.dtype == torch.float32
    assert torch.equal(target.conv_in.weight, half["conv_in.weight"].float())


def test_features_equal_a_unet_loaded_the_diffusers_way(source, tmp_path):
    """What CleanDIFT's README does (load_state_dict strict) gives the same block-1 features."""
    _, half = source
    save_file(half, str(tmp_path / "w.safetensors"))
    ours = _unet(seed=2)
    load_unet_weights(ours, tmp_path / "w.safetensors")
    theirs = _unet(seed=3)
    theirs.load_state_dict({k: v.float() for k, v in half.items()}, strict=True)
    latent, context = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        a = TruncatedUNet(ours, 1)(latent, 261, context)
        b = TruncatedUNet(theirs, 1)(latent, 261, context)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["unet.", "unet_feature_extractor_cleandift."])
def test_prefixed_layouts(source, tmp_path, prefix):
    _, half = source
    state = {prefix + k: v for k, v in half.items()}
    if prefix.startswith("unet_feature_extractor"):
        # cleandift_sd21_full.safetensors also holds the original UNet and adapters: those must be ignored
        state |= {"unet_feature_extractor_base." + k: torch.zeros_like(v) for k, v in half.items()}
        state["adapters.us6.0.weight"] = torch.zeros(4, 4, dtype=torch.float16)
    save_file(state, str(tmp_path / "w.safetensors"))
    target = _unet(seed=2)
    load_unet_weights(target, tmp_path / "w.safetensors")
    assert torch.equal(target.up_blocks[1].resnets[0].conv1.weight, half["up_blocks.1.resnets.0.conv1.weight"].float())


def test_missing_key_is_named_and_nothing_changes(source, tmp_path):
    _, half = source
    save_file(
        {k: v for k, v in half.items() if k != "mid_block.resnets.0.conv1.weight"}, str(tmp_path / "w.safetensors")
    )
    target = _unet(seed=2)
    before = _snapshot(target)
    with pytest.raises(WeightsError, match=r"w\.safetensors.*missing keys: mid_block\.resnets\.0\.conv1\.weight"):
        load_unet_weights(target, tmp_path / "w.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_wrong_shape_and_unexpected_keys_are_named(source, tmp_path):
    _, half = source
    bad = dict(half)
    bad["conv_in.weight"] = torch.zeros(32, 4, 1, 1, dtype=torch.float16)
    bad["extra.weight"] = torch.zeros(2, dtype=torch.float16)
    save_file(bad, str(tmp_path / "w.safetensors"))
    with pytest.raises(
        WeightsError, match=r"unexpected keys: extra\.weight.*wrong shapes: conv_in\.weight \(32, 4, 1, 1\)"
    ):
        load_unet_weights(_unet(seed=2), tmp_path / "w.safetensors")


def test_integer_tensors_are_refused_before_any_change(source, tmp_path):
    _, half = source
    bad = dict(half)
    bad["conv_out.bias"] = torch.zeros_like(half["conv_out.bias"], dtype=torch.int16)
    save_file(bad, str(tmp_path / "w.safetensors"))
    target = _unet(seed=2)
    before = _snapshot(target)
    with pytest.raises(WeightsError, match=r"conv_out\.bias hold non-floating-point"):
        load_unet_weights(target, tmp_path / "w.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_unrelated_file_and_other_formats_are_refused(source, tmp_path):
    save_file({"encoder.conv.weight": torch.zeros(2)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(WeightsError, match=r"holds no SD UNet weights.*cleandift_sd21_unet\.safetensors"):
        load_unet_weights(_unet(seed=2), tmp_path / "vae.safetensors")
    _, half = source
    torch.save(half, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"must be a \.safetensors file"):
        load_unet_weights(_unet(seed=2), tmp_path / "w.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_unet_weights(_unet(seed=2), tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match=r"absent\.safetensors does not exist"):
        load_unet_weights(_unet(seed=2), str(tmp_path / "absent.safetensors"))


def test_hub_spec_offline_gives_the_offline_advice(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import (diffusers imported it already): set its constant too, so the
    # test never touches the network (and does not wait for it).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.chdir(tmp_path)  # so the spec cannot exist as a local path
    with pytest.raises(WeightsError, match=r"(?s)CompVis/cleandift.*HF_HUB_OFFLINE is set.*hf download CompVis/cleandift "
                       r"cleandift_sd21_unet\.safetensors --local-dir DIR"):
        load_unet_weights(_unet(seed=2), CLEANDIFT_UNET_WEIGHTS)


def test_hub_spec_parsing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert split_hub_file("CompVis/cleandift/cleandift_sd21_unet.safetensors") == (
        "CompVis/cleandift",
        "cleandift_sd21_unet.safetensors",
    )
    assert split_hub_file("owner/repo/sub/dir/w.safetensors") == ("owner/repo", "sub/dir/w.safetensors")
    for local in ("w.safetensors", "./a/b/c.safetensors", "/abs/a/b.safetensors", "~/a/b/c", "a/../b/c", "a\\b\\c"):
        assert split_hub_file(local) is None, local
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "z.safetensors").write_bytes(b"")
    assert split_hub_file("x/y/z.safetensors") is None  # an existing local file wins
