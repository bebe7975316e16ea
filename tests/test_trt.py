"""TensorRT backend: engine-cache keys, engine manifests and profiles without TensorRT; engines where it exists."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from dift_fast.export.manifest import file_sha256
from dift_fast.export.trt_engines import (
    GpuInfo,
    Profile,
    build_profiles,
    check_engine_manifest,
    engine_cache_key,
    engine_manifest,
    find_cached_plan,
    write_plan,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
PROFILE = Profile({"x_t": ((1, 4, 96, 96), (8, 4, 96, 96), (16, 4, 96, 96)), "timestep": ((1,), (1,), (1,))})


def static_manifest(dynamic: bool = False) -> dict:
    sp = ["height", "width"] if dynamic else [96, 96]
    ip = ["image_height", "image_width"] if dynamic else [768, 768]
    return {"graphs": {
        "unet": {"inputs": [{"name": "x_t", "shape": ["batch", 4, *sp]}, {"name": "timestep", "shape": [1]},
                            {"name": "encoder_hidden_states", "shape": ["batch", 77, 1024]}]},
        "vae_encoder": {"inputs": [{"name": "images", "shape": ["batch", 3, *ip]}], "downsample_factor": 8},
    }}


def test_cache_key_depends_on_each_part():
    key = engine_cache_key("a" * 64, "10.8.0", H100, PROFILE)
    assert key == engine_cache_key("a" * 64, "10.8.0", GpuInfo(H100.name, (9, 0)), PROFILE)  # stable
    other_profile = Profile({**PROFILE.shapes, "x_t": ((1, 4, 96, 96), (4, 4, 96, 96), (16, 4, 96, 96))})
    variants = [engine_cache_key("b" * 64, "10.8.0", H100, PROFILE),
                engine_cache_key("a" * 64, "11.0.0", H100, PROFILE),
                engine_cache_key("a" * 64, "10.8.0", GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0)), PROFILE),
                engine_cache_key("a" * 64, "10.8.0", GpuInfo(H100.name, (9, 1)), PROFILE),
                engine_cache_key("a" * 64, "10.8.0", H100, other_profile)]
    assert len({key, *variants}) == 6


def test_engine_manifest_check_names_the_reason():
    expected = engine_manifest("unet", "a" * 64, "10.8.0", H100, PROFILE)
    assert check_engine_manifest(expected, expected) == []
    assert check_engine_manifest(None, expected) == ["not a dift-fast TensorRT engine manifest"]
    assert check_engine_manifest({**expected, "format_version": 0}, expected)[0].startswith("engine manifest version")
    cases = {
        "ONNX graph changed": engine_manifest("unet", "b" * 64, "10.8.0", H100, PROFILE),
        "TensorRT 11.0.0": engine_manifest("unet", "a" * 64, "11.0.0", H100, PROFILE),
        "built on NVIDIA A100": engine_manifest("unet", "a" * 64, "10.8.0", GpuInfo("NVIDIA A100", (8, 0)), PROFILE),
        "profile": engine_manifest("unet", "a" * 64, "10.8.0", H100,
                                   Profile({"x_t": ((1, 4, 64, 64),) * 3, "timestep": ((1,),) * 3})),
    }
    for words, found in cases.items():
        reasons = check_engine_manifest(found, expected)
        assert reasons and any(words in r for r in reasons), (words, reasons)


def test_cached_plan_is_used_only_with_a_matching_manifest(tmp_path):
    expected = engine_manifest("unet", "a" * 64, "10.8.0", H100, PROFILE)
    assert find_cached_plan(tmp_path, "unet", expected) == (None, ["no engine built yet"])
    write_plan(tmp_path, "unet", b"plan-bytes", expected, 1.0)
    assert find_cached_plan(tmp_path, "unet", expected) == (b"plan-bytes", [])
    meta = json.loads((tmp_path / "unet.plan.json").read_text())
    assert meta["plan_sha256"] == file_sha256(tmp_path / "unet.plan") and meta["key"] == expected["key"]
    # stale: another TensorRT version
    newer = engine_manifest("unet", "a" * 64, "10.9.0", H100, PROFILE)
    plan, reasons = find_cached_plan(tmp_path, "unet", newer)
    assert plan is None and "TensorRT 10.8.0" in reasons[0]
    # foreign: the plan was replaced behind the manifest's back
    (tmp_path / "unet.plan").write_bytes(b"something else")
    assert find_cached_plan(tmp_path, "unet", expected)[1] == [
        "the plan file does not match its manifest (modified or foreign)"]
    (tmp_path / "unet.plan.json").unlink()
    assert find_cached_plan(tmp_path, "unet", expected)[1] == ["the plan has no manifest (foreign engine)"]


def test_profiles_cover_batch_one_to_max():
    profiles = build_profiles(static_manifest(), max_batch=16, opt_batch=8)
    assert profiles["unet"].shapes["x_t"] == ((1, 4, 96, 96), (8, 4, 96, 96), (16, 4, 96, 96))
    assert profiles["unet"].shapes["encoder_hidden_states"][2] == (16, 77, 1024)
    assert profiles["unet"].shapes["timestep"] == ((1,), (1,), (1,))
    assert profiles["vae_encoder"].shapes["images"][0] == (1, 3, 768, 768)
    dyn = build_profiles(static_manifest(dynamic=True), max_batch=4, latent_range=(32, 64, 128))
    assert dyn["unet"].shapes["x_t"] == ((1, 4, 32, 32), (4, 4, 64, 64), (4, 4, 128, 128))
    assert dyn["vae_encoder"].shapes["images"][2] == (4, 3, 1024, 1024)
    with pytest.raises(ValueError, match="max_batch"):
        build_profiles(static_manifest(), max_batch=0)


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when TensorRT is missing")
def test_missing_tensorrt_is_a_clear_error():
    from dift_fast.export.trt_backend import create

    with pytest.raises(RuntimeError, match="TensorRT 10 or 11"):
        create(None, torch.device("cuda"), torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package (TensorRT 10 or 11)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_engine_matches_torch_and_is_cached(tiny_model_dir, tmp_path, cuda_graph):
    from dift_fast.export.graphs import export_onnx
    from dift_fast.export.trt_backend import create

    from dift_fast.loading import load_components

    comps = load_components(str(tiny_model_dir), None, 1)
    export_onnx(comps, tmp_path, image_size=(64, 48))
    backend = create(comps, torch.device("cuda"), torch.float32, engine_dir=str(tmp_path), max_batch=4,
                     cuda_graph=cuda_graph)
    x, ctx = torch.randn(2, 4, 6, 8), torch.randn(2, 77, 32)
    with torch.inference_mode():
        ref = comps.unet(x, torch.tensor([261]), ctx)
    for _ in range(2):
        out = backend.features(x.cuda(), 261, ctx.cuda()).float().cpu()
        # TensorRT may pick TF32 tactics for fp32 convolutions (10-bit mantissa): 1e-2, not the CPU's 1e-4.
        assert float((out - ref).norm() / ref.norm()) < 1e-2
    again = create(comps, torch.device("cuda"), torch.float32, engine_dir=str(tmp_path), max_batch=4, no_build=True)
    assert again.unet is not None  # loaded from the cache: no_build did not raise
    with pytest.raises(RuntimeError, match="profile"):
        create(comps, torch.device("cuda"), torch.float32, engine_dir=str(tmp_path), max_batch=8, no_build=True)
