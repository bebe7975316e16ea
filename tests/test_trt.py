"""TensorRT backend: engine-cache keys, engine manifests and profiles without TensorRT; engines where it exists."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import pytest
import torch
from dift_fast.export.manifest import file_sha256
from dift_fast.export.run_checks import FixedPrompt
from dift_fast.export.trt_engines import (
    GpuInfo,
    Profile,
    build_profiles,
    check_engine_manifest,
    engine_cache_key,
    engine_manifest,
    find_cached_plan,
    row_chunks,
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


def test_profiles_are_sized_from_the_batch_and_the_ensemble():
    """3 images at E = 8 are 24 UNet rows: the profile admits exactly that (the old fixed 16 rows overflowed)."""
    profiles = build_profiles(static_manifest(), max_images=3, ensemble_size=8)
    assert profiles["unet"].shapes["x_t"] == ((1, 4, 96, 96), (24, 4, 96, 96), (24, 4, 96, 96))
    assert profiles["unet"].shapes["encoder_hidden_states"][2] == (24, 77, 1024)
    assert profiles["unet"].shapes["timestep"] == ((1,), (1,), (1,))
    assert profiles["vae_encoder"].shapes["images"] == ((1, 3, 768, 768), (3, 3, 768, 768), (3, 3, 768, 768))
    assert profiles["unet"].max_rows("x_t") == 24 and profiles["vae_encoder"].max_rows("images") == 3
    tuned = build_profiles(static_manifest(), max_images=4, ensemble_size=8, opt_images=2)
    assert tuned["unet"].shapes["x_t"][1][0] == 16 and tuned["vae_encoder"].shapes["images"][1][0] == 2
    with pytest.raises(ValueError, match="max_batch"):
        build_profiles(static_manifest(), max_images=0)
    with pytest.raises(ValueError, match="ensemble_size"):
        build_profiles(static_manifest(), max_images=1, ensemble_size=0)


def test_dynamic_profiles_follow_the_configured_size_or_the_range():
    davis = build_profiles(static_manifest(dynamic=True), max_images=1, ensemble_size=8, latent_hw=(60, 104))
    assert davis["unet"].shapes["x_t"] == ((1, 4, 60, 104), (8, 4, 60, 104), (8, 4, 60, 104))
    assert davis["vae_encoder"].shapes["images"][2] == (1, 3, 480, 832)
    ranged = build_profiles(static_manifest(dynamic=True), max_images=4, latent_range=(32, 64, 128),
                            latent_hw=(60, 104))  # an explicit range wins over the configured size
    assert ranged["unet"].shapes["x_t"] == ((1, 4, 32, 32), (4, 4, 64, 64), (4, 4, 128, 128))
    assert ranged["vae_encoder"].shapes["images"][2] == (4, 3, 1024, 1024)
    default = build_profiles(static_manifest(dynamic=True), max_images=1)
    assert default["unet"].shapes["x_t"][2] == (1, 4, 128, 128)


def test_profiles_for_take_the_extractor_config():
    from dift_fast.export.trt_backend import profiles_for

    from dift_fast import DiftConfig
    from dift_fast.backend_options import TrtOptions

    manifest = static_manifest(dynamic=True)
    config = DiftConfig.from_preset("davis", batch_size=3)  # 832x480, E = 8
    p = profiles_for(manifest, TrtOptions(), config)
    assert p["unet"].shapes["x_t"][2] == (24, 4, 60, 104) and p["vae_encoder"].shapes["images"][2] == (3, 3, 480, 832)
    assert profiles_for(manifest, TrtOptions(max_batch=2), config)["unet"].max_rows("x_t") == 16
    # no config: DiftConfig's defaults (1 image, E = 8, 768x768), not one row per call
    assert profiles_for(manifest, TrtOptions())["unet"].shapes["x_t"][2] == (8, 4, 96, 96)


@pytest.mark.parametrize("n,max_rows", [(1, 1), (7, 8), (8, 8), (24, 16), (25, 8), (3, 1)])
def test_row_chunks_cover_every_row_once_within_the_limit(n, max_rows):
    chunks = row_chunks(n, max_rows)
    rows = [i for s in chunks for i in range(s.start, s.stop)]
    assert rows == list(range(n))
    assert all(0 < s.stop - s.start <= max_rows for s in chunks)
    assert len({s.stop - s.start for s in chunks}) <= 2  # full chunks and one remainder: few CUDA-graph shapes
    with pytest.raises(ValueError):
        row_chunks(n, 0)


# -- the backend on fake engines (CPU): chunking, the fixed prompt, the timestep ----------------------------------


def fake_manifest(fixed_prompt: bool = False) -> dict:
    unet_inputs = [{"name": "x_t", "shape": ["batch", 4, 6, 8]}, {"name": "timestep", "shape": [1]}]
    if not fixed_prompt:
        unet_inputs.append({"name": "encoder_hidden_states", "shape": ["batch", 77, 32]})
    return {"dtype": "fp32", "fixed_prompt": {"text": "a cat"} if fixed_prompt else None, "graphs": {
        "unet": {"inputs": unet_inputs, "geometry": {"channels": 3, "num_downsamplers": 0, "num_upsamplers": 0}},
        "vae_encoder": {"inputs": [{"name": "images", "shape": ["batch", 3, 48, 64]}],
                        "outputs": [{"name": "moments", "shape": ["batch", 8, 6, 8]}],
                        "downsample_factor": 8, "scaling_factor": 0.18215},
    }}


def unet_rows(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    """The fake UNet: a different value per row, from that row's latent, prompt and the timestep."""
    feats = x[:, :3] * (1 + t.float()) / 1000
    return feats if ctx is None else feats + ctx[:, :3, :3].mean(dim=2)[:, :, None, None]


def vae_rows(images: torch.Tensor) -> torch.Tensor:
    pooled = torch.nn.functional.avg_pool2d(images, 8)  # [n, 3, 6, 8]
    return torch.cat([pooled, pooled[:, :1], -torch.ones_like(pooled), -torch.ones_like(pooled[:, :1])], dim=1)


class FakeEngine:
    """Stands for a TrtEngine: refuses more rows than its profile, as set_input_shape does, and records calls."""

    def __init__(self, fn, max_rows: int) -> None:
        self.fn, self.max_rows, self.calls = fn, max_rows, []

    def __call__(self, feeds: dict, device: torch.device) -> dict:
        rows = next(iter(feeds.values())).shape[0]
        if rows > self.max_rows:
            raise RuntimeError(f"profile admits {self.max_rows} rows, got {rows}")
        self.calls.append({k: tuple(v.shape) for k, v in feeds.items()})
        if "images" in feeds:
            return {"moments": vae_rows(feeds["images"])}
        return {"features": self.fn(feeds["x_t"], feeds["timestep"], feeds.get("encoder_hidden_states"))}


def fake_backend(max_images: int, ensemble: int, fixed: FixedPrompt | None = None):
    from dift_fast.export.trt_backend import TrtBackend

    manifest = fake_manifest(fixed is not None)
    profiles = build_profiles(manifest, max_images=max_images, ensemble_size=ensemble)
    unet = FakeEngine(unet_rows, profiles["unet"].max_rows("x_t"))
    vae = FakeEngine(vae_rows, profiles["vae_encoder"].max_rows("images"))
    return TrtBackend(manifest, torch.device("cpu"), unet, vae, profiles, fixed), unet, vae


def test_micro_batches_larger_than_the_profile_run_in_chunks():
    """5 images x E = 4 = 20 rows through a profile of 2 images (8 rows): chunks 8 + 8 + 4, same result."""
    backend, unet, vae = fake_backend(max_images=2, ensemble=4)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(20, 4, 6, 8, generator=g), torch.randn(20, 77, 32, generator=g)
    out = backend.features(x, 261, ctx)
    assert torch.equal(out, unet_rows(x, torch.tensor([261]), ctx))
    assert [c["x_t"][0] for c in unet.calls] == [8, 8, 4]
    assert all(c["encoder_hidden_states"][0] == c["x_t"][0] for c in unet.calls)  # prompts chunked with latents
    images = torch.rand(5, 3, 48, 64, generator=g) * 2 - 1
    mean, std = backend.encode(images)
    assert [c["images"][0] for c in vae.calls] == [2, 2, 1]
    assert torch.equal(mean, vae_rows(images)[:, :4]) and mean.shape == std.shape == (5, 4, 6, 8)
    unet.calls.clear()
    backend.features(x[:8], 51, ctx[:8])  # within the profile: one call
    assert len(unet.calls) == 1


def test_unconditional_and_pixel_space_exports():
    """A backbone without text (context None) feeds no prompt input; an export without an encoder graph (pixel
    space) gets a UNet profile only, its default range in pixels."""
    backend, unet, _ = fake_backend(max_images=1, ensemble=2)
    x = torch.randn(3, 4, 6, 8)
    out = backend.features(x, 51, None)
    assert torch.equal(out, unet_rows(x, torch.tensor([51]), None))
    assert [sorted(c) for c in unet.calls] == [["timestep", "x_t"]] * 2
    manifest = {"graphs": {"unet": {"inputs": [{"name": "x_t", "shape": ["batch", 3, "height", "width"]},
                                               {"name": "timestep", "shape": [1]}]}}}
    profiles = build_profiles(manifest, max_images=2, ensemble_size=4)
    assert list(profiles) == ["unet"]
    assert profiles["unet"].shapes["x_t"] == ((1, 3, 256, 256), (8, 3, 768, 768), (8, 3, 1024, 1024))


def test_timestep_tensor_is_made_once_per_value():
    backend, _, _ = fake_backend(max_images=1, ensemble=2)
    x, ctx = torch.randn(2, 4, 6, 8), torch.randn(2, 77, 32)
    backend.features(x, 261, ctx)
    first = backend._timestep(261)
    backend.features(x, 261, ctx)
    assert backend._timestep(261) is first and backend._timestep(51) is not first


def test_fixed_prompt_engine_refuses_another_prompt(tmp_path):
    cat = torch.randn(77, 32, generator=torch.Generator().manual_seed(1))
    backend, unet, _ = fake_backend(max_images=1, ensemble=2, fixed=FixedPrompt(cat, "a cat", tmp_path))
    x = torch.randn(3, 4, 6, 8)
    out = backend.features(x, 261, cat.expand(3, 77, 32))  # its own prompt (3 rows: chunks 2 + 1)
    assert torch.equal(out, unet_rows(x, torch.tensor([261]), None))
    assert all("encoder_hidden_states" not in c for c in unet.calls)  # the graph takes no prompt input
    dog = cat.clone()
    dog[5:] += 1.0  # another prompt shares the start token and little else
    mixed = torch.stack([cat, dog, cat])
    with pytest.raises(ValueError, match="folds the prompt 'a cat'"):
        backend.features(x, 261, mixed)
    with pytest.raises(ValueError, match="do not match"):
        backend.features(x, 261, torch.randn(3, 77, 16))


def test_fixed_prompt_embedding_file_is_checked(tmp_path):
    import numpy as np
    from dift_fast.export.run_checks import PROMPT_FILE

    manifest = {"fixed_prompt": {"text": "a cat"}}
    assert FixedPrompt.of_export(tmp_path, {"fixed_prompt": None}) is None
    with pytest.raises(ValueError, match="cannot be read"):
        FixedPrompt.of_export(tmp_path, manifest)
    np.save(tmp_path / PROMPT_FILE, np.zeros((77, 32), np.float32))  # not [1, 77, D]
    with pytest.raises(ValueError, match=r"\[1, 77, D\]"):
        FixedPrompt.of_export(tmp_path, manifest)
    np.save(tmp_path / PROMPT_FILE, np.ones((1, 77, 32), np.float32))
    assert FixedPrompt.of_export(tmp_path, manifest).embedding.shape == (77, 32)


def test_static_export_of_another_size_is_refused():
    from dift_fast.export.run_checks import check_image_size

    static = {"dynamic_size": False, "image_size": [768, 768]}
    check_image_size(static, (768, 768), "exp")
    check_image_size(static, None, "exp")  # the extractor keeps each image's size: nothing to compare
    check_image_size({"dynamic_size": True, "image_size": None}, (832, 480), "exp")
    with pytest.raises(ValueError, match=r"static size 768x768.*832x480"):
        check_image_size(static, (832, 480), "exp")


# -- the runtime and the builder on a fake tensorrt module: every failure reported by a return value is caught --


@pytest.fixture
def fake_trt(monkeypatch):
    from trt_fakes import FakeTrt

    trt = FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_engine_runs_and_checks_each_call(fake_trt):
    from dift_fast.export.trt_runtime import TrtEngine

    engine = TrtEngine(b"plan", cuda_graph=False, name="unet")
    assert engine.inputs == ["x_t", "timestep"] and engine.outputs == ["features"]
    x = torch.randn(2, 4, 6, 8)
    outs = engine({"x_t": x, "timestep": torch.tensor([261])}, torch.device("cpu"))
    assert outs["features"].shape == (2, 3, 6, 8) and outs["features"].dtype == torch.float32
    assert fake_trt.calls[-1] == ("execute", 0, {"x_t": (2, 4, 6, 8), "timestep": (1,)})
    with pytest.raises(RuntimeError, match=r"refused input x_t of shape \(9, 4, 6, 8\).*\(8, 4, 6, 8\)"):
        engine({"x_t": torch.randn(9, 4, 6, 8), "timestep": torch.tensor([1])}, torch.device("cpu"))
    for call, words in (("set_tensor_address", "refused the address"), ("execute", "execute_async_v3")):
        fake_trt.fail = {call}
        with pytest.raises(RuntimeError, match=words):
            engine({"x_t": x, "timestep": torch.tensor([1])}, torch.device("cpu"))
    fake_trt.fail = set()
    fake_trt.output_shape = (-1, 3, 6, 8)
    with pytest.raises(RuntimeError, match="could not infer the shape of output features"):
        engine({"x_t": x, "timestep": torch.tensor([1])}, torch.device("cpu"))


@pytest.mark.parametrize("call,words", [("deserialize", "could not deserialize"),
                                        ("create_execution_context", "123 bytes of device memory")])
def test_engine_load_failures_are_reported(fake_trt, call, words):
    from dift_fast.export.trt_runtime import TrtEngine

    fake_trt.fail = {call}
    with pytest.raises(RuntimeError, match=words):
        TrtEngine(b"plan", cuda_graph=False)


BUILD_PROFILE = Profile({"x_t": ((1, 4, 6, 8), (8, 4, 6, 8), (8, 4, 6, 8)), "timestep": ((1,), (1,), (1,))})


def test_build_uses_a_strongly_typed_network_and_keeps_the_timing_cache(fake_trt, tmp_path):
    from dift_fast.export.trt_builder import build_engine

    cache = tmp_path / "timing.cache"
    assert build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, cache, workspace_bytes=1 << 30) == b"plan"
    assert ("create_network", 1 << 5) in fake_trt.calls  # STRONGLY_TYPED on TensorRT 10
    assert ("set_shape", "x_t", (1, 4, 6, 8), (8, 4, 6, 8), (8, 4, 6, 8)) in fake_trt.calls
    assert cache.read_bytes() == b"built"
    build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, cache)  # the second build starts from the first's timings
    assert cache.read_bytes() == b"builtbuilt"
    fake_trt.__version__ = "11.0.0"
    fake_trt.calls.clear()
    build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, cache)
    assert ("create_network", 0) in fake_trt.calls  # TensorRT 11 is strongly typed only


@pytest.mark.parametrize("call", ["create_timing_cache", "set_timing_cache"])
def test_an_unusable_timing_cache_is_reported_and_replaced(fake_trt, tmp_path, caplog, call):
    from dift_fast.export.trt_builder import build_engine

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    fake_trt.fail = {call}
    with caplog.at_level(logging.WARNING):
        assert build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, cache) == b"plan"
    assert "is not used" in caplog.text and str(cache) in caplog.text
    assert cache.read_bytes() == b"built"  # built from an empty cache, then replaced


def test_a_timing_cache_written_meanwhile_is_combined(fake_trt, tmp_path, caplog, monkeypatch):
    from dift_fast.export import trt_builder

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    attach = trt_builder._attach_timing_cache

    def other_build_writes(config, path):  # another process saves its timings while this one builds
        out = attach(config, path)
        path.write_bytes(b"other")
        return out

    monkeypatch.setattr(trt_builder, "_attach_timing_cache", other_build_writes)
    trt_builder.build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, cache)
    assert cache.read_bytes() == b"other+oldbuilt"
    fake_trt.fail = {"combine"}
    cache.write_bytes(b"old")
    with caplog.at_level(logging.WARNING):
        trt_builder.build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, cache)
    assert "could not combine" in caplog.text and cache.read_bytes() == b"oldbuilt"


@pytest.mark.parametrize("call,words", [
    ("create_empty_timing_cache", "create an empty timing cache"),
    ("set_empty_timing_cache", "refused its own empty timing cache"),
    ("add_optimization_profile", "refused the optimisation profile"),
    ("set_shape", "refused the profile of input x_t"),
    ("build", "failed to build an engine"),
    ("parse", "could not parse.*unsupported op Foo"),
])
def test_build_failures_are_reported(fake_trt, tmp_path, call, words):
    from dift_fast.export.trt_builder import build_engine

    fake_trt.fail = {call}
    with pytest.raises(RuntimeError, match=words):
        build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, tmp_path / "timing.cache")
    assert not (tmp_path / "timing.cache").exists()


def test_build_refuses_a_profile_that_misses_an_input(fake_trt, tmp_path):
    from dift_fast.export.trt_builder import build_engine

    fake_trt.network_inputs = ["x_t", "timestep", "encoder_hidden_states"]
    with pytest.raises(RuntimeError, match="profile covers"):
        build_engine(tmp_path / "unet.onnx", BUILD_PROFILE, tmp_path / "timing.cache")


def test_create_backend_hands_the_config_to_the_backend():
    from dift_fast import DiftConfig, backends

    seen = {}
    backends._FACTORIES["fake-accelerated"] = lambda *a, **k: seen.update(args=a, kwargs=k) or "backend"
    try:
        config = DiftConfig(batch_size=2)
        assert backends.create_backend("fake-accelerated", "comps", "dev", "dtype", None, config=config) == "backend"
        assert seen["kwargs"] == {"config": config}
        backends.create_backend("fake-accelerated", "comps", "dev", "dtype", None)
        assert seen["kwargs"] == {}  # factories without the keyword keep working
    finally:
        del backends._FACTORIES["fake-accelerated"]


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when TensorRT is missing")
def test_missing_tensorrt_is_a_clear_error():
    from dift_fast.export.trt_backend import create

    with pytest.raises(RuntimeError, match="TensorRT 10 or 11"):
        create(None, torch.device("cuda"), torch.float16)


def needs_trt_gpu(test):
    """GPU tests: marked ``gpu``, skipped without TensorRT or a CUDA device."""
    test = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    test = pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package (TensorRT 10 or 11)")(test)
    return pytest.mark.gpu(test)


@needs_trt_gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_engine_matches_torch_chunks_and_is_cached(tiny_model_dir, tmp_path, cuda_graph):
    from dift_fast.export.graphs import export_onnx
    from dift_fast.export.trt_backend import create

    from dift_fast import DiftConfig
    from dift_fast.loading import load_components

    comps = load_components(str(tiny_model_dir), None, 1)
    export_onnx(comps, tmp_path, image_size=(64, 48))
    config = DiftConfig(model=str(tiny_model_dir), image_size=(64, 48), ensemble_size=2, batch_size=1)
    backend = create(comps, torch.device("cuda"), torch.float32, export_dir=str(tmp_path), cuda_graph=cuda_graph,
                     config=config)
    assert backend.max_rows == {"unet": 2, "vae": 1}  # 1 image x E = 2
    x, ctx = torch.randn(6, 4, 6, 8), torch.randn(6, 77, 32)  # 3 images: three chunks of 2 rows
    with torch.inference_mode():
        ref = comps.unet(x, torch.tensor([261]), ctx)
    for _ in range(2):  # the second pass replays the captured graphs
        out = backend.features(x.cuda(), 261, ctx.cuda()).float().cpu()
        # TensorRT may pick TF32 tactics for fp32 convolutions (10-bit mantissa): 1e-2, not the CPU's 1e-4.
        assert float((out - ref).norm() / ref.norm()) < 1e-2
    again = create(comps, torch.device("cuda"), torch.float32, export_dir=str(tmp_path), no_build=True, config=config)
    assert again.unet is not None  # loaded from the cache: no_build did not raise
    with pytest.raises(RuntimeError, match="profile"):
        create(comps, torch.device("cuda"), torch.float32, export_dir=str(tmp_path), max_batch=2, no_build=True,
               config=config)


@needs_trt_gpu
def test_tensorrt_fixed_prompt_fp16_engine_refuses_another_prompt(tiny_model_dir, tmp_path):
    from dift_fast.export.graphs import export_onnx
    from dift_fast.export.trt_backend import create

    from dift_fast.loading import load_components
    from dift_fast.prompts import encode_prompt

    comps = load_components(str(tiny_model_dir), None, 1)
    export_onnx(comps, tmp_path, dtype="fp16", image_size=(64, 48), fixed_prompt="a photo of a cat")
    backend = create(comps, torch.device("cuda"), torch.float16, export_dir=str(tmp_path), max_batch=2)
    cat = encode_prompt(comps.tokenizer, comps.text_encoder, "a photo of a cat").cuda()
    dog = encode_prompt(comps.tokenizer, comps.text_encoder, "a photo of a dog").cuda()
    x = torch.randn(2, 4, 6, 8, device="cuda")
    with torch.inference_mode():
        ref = comps.unet(x.cpu(), torch.tensor([261]), cat.cpu().expand(2, 77, -1))
    out = backend.features(x.half(), 261, cat.expand(2, 77, -1)).float().cpu()
    # fp16 weights and activations (unit roundoff 4.9e-4) over the tiny UNet's layers; as the ORT fp16 bound.
    assert float((out - ref).norm() / ref.norm()) < 1e-2
    with pytest.raises(ValueError, match="folds the prompt"):
        backend.features(x.half(), 261, torch.stack([cat, dog]))


@needs_trt_gpu
def test_tensorrt_extractor_runs_micro_batches_beyond_the_profile(tiny_model_dir, tmp_path):
    """3 images at E = 8 per micro-batch (24 UNet rows) on engines built for 1 image: chunked, equal to torch."""
    from dift_fast import DiftExtractor
    from dift_fast.backend_options import TrtOptions

    common = {"model": str(tiny_model_dir), "image_size": (64, 48), "ensemble_size": 8, "batch_size": 3,
              "device": "cuda", "dtype": "fp32"}
    images = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = DiftExtractor.from_pretrained(**common).extract(images)
    ex = DiftExtractor.from_pretrained(**common, backend="tensorrt",
                                       backend_options=TrtOptions(export_dir=str(tmp_path), max_batch=1))
    out = ex.extract(images)
    # TF32 tactics in TensorRT's fp32 convolutions, as above.
    assert float((out.cpu() - ref.cpu()).norm() / ref.cpu().norm()) < 1e-2

