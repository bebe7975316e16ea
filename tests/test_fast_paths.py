"""The torch backend's fast paths against plain eager, on the CPU (issue 10: item 5 and "fast by construction").

Each fast path is chosen so that the features stay those of the eager fp32 NCHW path within float rounding; here
each is run on the CPU where it can run (channels-last, the scoped switches, the fp16 attention decision, the
memory estimate, torch.compile) and its decision logic is checked where only a GPU can run it (CUDA graphs, TF32,
cuDNN autotuning). tests/test_gpu_extractor.py has the GPU side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dift_fast import DiftConfig, DiftExtractor, _torch_impl, ops
from dift_fast.attention import classic_attention_needed, configure_attention, sdpa_kernel_name
from dift_fast.backends import TorchBackend, create_backend
from dift_fast.batch_size import (
    MAX_AUTO_BATCH,
    PerImageMemory,
    batch_size_for_memory,
    estimate_per_image_memory,
    peak_activation_bytes,
    resolve_batch_size,
)
from dift_fast.cli.common import add_model_options, config_overrides
from dift_fast.compiled import CompiledCall, compile_mode
from dift_fast.geometry import NetworkGeometry
from dift_fast.identity import config_identity, feature_identity, ran_tf32
from dift_fast.loading import load_components
from dift_fast.run_flags import network_flags, tf32_state

diffusers = pytest.importorskip("diffusers", reason="the tiny model and the attention processors need diffusers")
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0  # noqa: E402

SD21 = Path(__file__).resolve().parents[1] / "dift_fast" / "architectures" / "sd21"
MiB = 2**20


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny_config(tiny_model_dir):
    return DiftConfig.from_preset(
        "spair", model=str(tiny_model_dir), ensemble_size=2, image_size=(64, 48), device="cpu"
    )


@pytest.fixture(scope="module")
def tiny_components(tiny_config):
    return load_components(tiny_config)


@pytest.fixture(scope="module")
def tiny_inputs(tiny_components):
    g = torch.Generator().manual_seed(0)
    width = tiny_components.network.config.cross_attention_dim
    return (
        torch.randn(2, 4, 6, 8, generator=g),
        261,
        torch.randn(2, 77, width, generator=g),
        torch.rand(2, 3, 48, 64, generator=g) * 2 - 1,
    )


# -- item 5: fp16 attention ------------------------------------------------------------------------------------


def _loud_attention() -> tuple[Attention, torch.Tensor]:
    """An SD-style attention (upcast_attention) whose fp32 scores exceed fp16's largest value (65504)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, upcast_attention=True).eval()
    x = torch.randn(1, 64, 32) * 400
    with torch.no_grad():
        q, k = attn.to_q(x)[..., :16], attn.to_k(x)[..., :16]
        scaled = (q @ k.transpose(-1, -2)).abs().max() * 16**-0.5
    assert scaled > 4 * 65504  # the premise: in fp16 these scores overflow
    return attn, x


def test_fused_attention_keeps_fp32_scores_and_math_in_fp16_overflows():
    """Why the decision is per kernel: the CPU's fused (flash) kernel and the classic processor keep the scores in
    fp32; the math kernel reducing in fp16 overflows. (torch's math kernel upcasts to fp32 by default since 2.5;
    the switch that turns that off is global, so the classic processor is what runs where math would.)"""
    attn, x = _loud_attention()
    with torch.no_grad():
        ref = attn(x)
        half = attn.to(torch.float16)
        half.set_processor(AttnProcessor2_0())
        assert sdpa_kernel_name(torch.device("cpu"), torch.float16, 2, 16) == "flash"
        fused = half(x.half())
        half.set_processor(AttnProcessor())
        classic = half(x.half())
        half.set_processor(AttnProcessor2_0())
        saved = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
        try:
            with sdpa_kernel([SDPBackend.MATH]):
                math_fp16 = half(x.half())
        finally:
            torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(saved)
    # fp16 output of fp32-accumulated attention: fp16 rounding of the inputs and projections (2^-11 relative per
    # op, a handful of ops) gives ~1e-3; 1e-2 fails on anything that overflowed or lost the upcast.
    assert torch.isfinite(fused).all() and relative_l2(fused.float(), ref) < 1e-2
    assert torch.isfinite(classic).all() and relative_l2(classic.float(), ref) < 1e-2
    assert not torch.isfinite(math_fp16).all()


def _processors(network) -> list[str]:
    return [type(m.processor).__name__ for m in network.modules() if isinstance(m, Attention)]


def test_fp16_runs_sdpa_where_a_fused_kernel_runs(tiny_components, tiny_inputs):
    """On the CPU, fp16 SDPA runs the flash kernel: no attention module is swapped, and fp16 features stay
    within the fp16 bound of tests/test_engine.py of fp32."""
    backend = TorchBackend(tiny_components.network, tiny_components.encoder, torch.device("cpu"), torch.float16)
    assert set(_processors(backend.network)) == {"AttnProcessor2_0"}
    assert backend.attention == {"sdpa:flash": len(_processors(backend.network))}
    ref = TorchBackend(tiny_components.network, tiny_components.encoder, torch.device("cpu"), torch.float32)
    x, t, ctx, _ = tiny_inputs
    half = backend.features(x, t, ctx)
    assert torch.isfinite(half).all()
    # fp16 keeps 11 mantissa bits (2^-12 per op): under a percent over the tiny model (tests/test_engine.py)
    assert relative_l2(half.float(), ref.features(x, t, ctx)) < 0.01


def test_fp16_swaps_to_the_classic_processor_where_sdpa_would_run_math(tiny_components, tiny_inputs):
    with sdpa_kernel([SDPBackend.MATH]):  # what a GPU or build without fused kernels looks like to the chooser
        backend = TorchBackend(tiny_components.network, None, torch.device("cpu"), torch.float16)
    upcast = [m for m in backend.network.modules() if isinstance(m, Attention) and m.upcast_attention]
    assert upcast and all(type(m.processor) is AttnProcessor for m in upcast)
    assert backend.attention.get("classic") == len(upcast)
    x, t, ctx, _ = tiny_inputs
    ref = TorchBackend(tiny_components.network, None, torch.device("cpu"), torch.float32).features(x, t, ctx)
    assert relative_l2(backend.features(x, t, ctx).float(), ref) < 0.01  # the fp16 bound, as above
    # the caller's modules keep diffusers' default processor
    assert set(_processors(tiny_components.network)) == {"AttnProcessor2_0"}


@pytest.mark.parametrize(
    ("choice", "dtype", "upcast", "classic"),
    [
        (0, torch.float16, True, True),  # math: the classic processor keeps fp32 scores
        (1, torch.float16, True, False),  # flash
        (2, torch.float16, True, False),  # memory-efficient
        (3, torch.float16, True, False),  # cuDNN
        (0, torch.bfloat16, True, False),  # bf16 has fp32's range
        (0, torch.float32, True, False),
        (0, torch.float16, False, False),  # the module does not ask for fp32 scores
    ],
)
def test_classic_processor_decision(choice, dtype, upcast, classic):
    module = Attention(query_dim=64, heads=4, dim_head=16, upcast_attention=upcast)
    seen = []

    def chooser(q, k, v):
        seen.append((tuple(q.shape), q.dtype, q.device))
        return choice

    assert classic_attention_needed(module, torch.device("cpu"), dtype, chooser) is classic
    if dtype == torch.float16 and upcast:  # asked with the module's heads and head size
        assert seen and seen[0][0][1] == 4 and seen[0][0][3] == 16 and seen[0][1] == torch.float16


def test_an_unanswerable_kernel_choice_counts_as_math():
    module = Attention(query_dim=64, heads=4, dim_head=16, upcast_attention=True)

    def broken(q, k, v):
        raise RuntimeError("No available kernel")

    assert sdpa_kernel_name(torch.device("cpu"), torch.float16, 4, 16, broken) == "unknown"
    assert classic_attention_needed(module, torch.device("cpu"), torch.float16, broken)
    net = torch.nn.Sequential(module)
    assert configure_attention(net, torch.device("cpu"), torch.float16, broken) == {"classic": 1}


# -- channels-last and the ensemble mean ---------------------------------------------------------------------


@pytest.mark.parametrize("use_native", [None, False])
def test_ensemble_reduce_reads_channels_last_features(use_native):
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        feats = torch.randn(6, 5, 4, 3, generator=g).to(dtype)
        nhwc = feats.contiguous(memory_format=torch.channels_last)
        assert not nhwc.is_contiguous()
        mean = ops.ensemble_reduce(nhwc, 3, use_native=use_native)
        assert mean.is_contiguous() and mean.shape == (2, 5, 4, 3)
        # the same additions in the same order: bit for bit what the NCHW input gives
        assert torch.equal(mean, ops.ensemble_reduce(feats, 3, use_native=use_native))
        m2, normed = ops.ensemble_reduce_normalized(nhwc, 3, use_native=use_native)
        r2, rnormed = ops.ensemble_reduce_normalized(feats, 3, use_native=use_native)
        assert m2.is_contiguous() and torch.equal(m2, r2) and torch.equal(normed, rnormed)


@pytest.mark.parametrize("backbone", ["sd", "adm"])
def test_channels_last_network_matches_eager_nchw(backbone, tiny_components, tiny_inputs):
    if backbone == "adm":
        components = load_components(
            DiftConfig.from_preset(
                "adm-spair", model="tiny-random-adm", image_size=(64, 96), ensemble_size=2, device="cpu"
            )
        )
        x, t, ctx, images = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(2)), 101, None, None
    else:
        components = tiny_components
        x, t, ctx, images = tiny_inputs
    device = torch.device("cpu")
    eager = TorchBackend(components.network, components.encoder, device, torch.float32, channels_last=False)
    fast = TorchBackend(components.network, components.encoder, device, torch.float32, channels_last=True)
    conv = next(m for m in fast.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    ref, out = eager.features(x, t, ctx), fast.features(x, t, ctx)
    assert out.shape == ref.shape
    # Other convolution algorithms for NHWC (oneDNN), same fp32 math: summation order only, ~1e-7 per op and
    # ~1e-6 over the network; 1e-5 leaves 10x margin and fails on any layout mistake (O(1)).
    assert relative_l2(out, ref) < 1e-5
    assert relative_l2(ops.ensemble_reduce(out, 2), ops.ensemble_reduce(ref, 2)) < 1e-5
    if images is not None:
        (m1, s1), (m2, s2) = eager.encode(images), fast.encode(images)
        assert m2.is_contiguous() and s2.is_contiguous()  # what the noise kernels read
        assert relative_l2(m2, m1) < 1e-5 and relative_l2(s2, s1) < 1e-5
    # the caller's weights keep their layout
    assert next(m for m in components.network.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous()


def test_channels_last_is_the_cuda_default_only(tiny_components):
    cpu = TorchBackend(tiny_components.network, None, torch.device("cpu"), torch.float32)
    assert cpu.channels_last is False and cpu.memory_format == torch.contiguous_format


def test_extractor_features_with_a_channels_last_backend_match(tiny_components, tiny_config, rng):
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    ext = DiftExtractor(tiny_components, tiny_config)
    ref = ext.extract(images)
    ext.backend = TorchBackend(
        tiny_components.network, tiny_components.encoder, torch.device("cpu"), torch.float32, channels_last=True
    )
    out = ext.extract(images)
    assert out.is_contiguous() and out.shape == ref.shape
    assert relative_l2(out, ref) < 1e-5  # as test_channels_last_network_matches_eager_nchw


# -- scoped switches: TF32 and cuDNN autotuning ------------------------------------------------------------------


def _switches() -> tuple:
    return (torch.backends.cudnn.benchmark, json.dumps(tf32_state(), sort_keys=True))


def test_network_flags_apply_inside_and_restore_after():
    before = _switches()
    with network_flags(tf32=False, benchmark=True):
        inside = tf32_state()
        assert torch.backends.cudnn.benchmark is True
        assert inside["matmul"] is False and inside["cudnn"] is False
    assert _switches() == before
    with network_flags(tf32=True, benchmark=False):
        assert tf32_state()["matmul"] is True and tf32_state()["cudnn"] is True
        assert torch.backends.cudnn.benchmark is False
    assert _switches() == before
    with pytest.raises(KeyError), network_flags(tf32=True, benchmark=True):
        raise KeyError("a failing network call")
    assert _switches() == before


def test_network_flags_respect_a_process_on_the_per_operation_interface():
    """A process that set TF32 through torch's per-operation precisions (the legacy getters then raise): the scope
    switches through that interface and gives back exactly what it found."""
    if not hasattr(torch.backends.cudnn, "conv") or not hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no per-operation fp32 precision")
    saved = tf32_state()["precisions"]
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        before = tf32_state()
        with network_flags(tf32=False, benchmark=False):
            inside = tf32_state()["precisions"]
            assert inside["cuda.matmul"] == "ieee" and inside["cudnn.conv"] == "ieee"
        assert tf32_state() == before
    finally:
        for path, value in saved.items():
            module, _, attr = path.partition(".")
            getattr(getattr(torch.backends, module), attr).fp32_precision = value


def test_cuda_backend_scopes_benchmark_for_static_shapes_and_no_tf32(tiny_components, monkeypatch):
    """The switches a CUDA backend would set around its calls (the context only; no kernel runs here)."""
    backend = TorchBackend(tiny_components.network, None, torch.device("cpu"), torch.float32, static_shapes=True)
    assert isinstance(backend._flags(), type(__import__("contextlib").nullcontext()))  # nothing on the CPU
    backend.device = torch.device("cuda")
    with backend._flags():
        assert torch.backends.cudnn.benchmark is True and tf32_state()["cudnn"] is False
    backend.static_shapes = False  # image_size=None: every image size would be autotuned
    with backend._flags():
        assert torch.backends.cudnn.benchmark is False
    backend.static_shapes, backend.tf32 = True, True
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    with backend._flags():  # determinism asked for: no timing-based algorithm choice
        assert torch.backends.cudnn.benchmark is False and tf32_state()["matmul"] is True


# -- torch.compile ---------------------------------------------------------------------------------------------


def test_compile_mode_uses_cuda_graphs_only_for_static_shapes_on_cuda():
    assert compile_mode(torch.device("cuda:1"), static_shapes=True) == "reduce-overhead"
    assert compile_mode(torch.device("cuda"), static_shapes=False) is None
    assert compile_mode(torch.device("cpu"), static_shapes=True) is None


def test_compiled_call_with_cuda_graphs_starts_a_step_and_returns_copies(monkeypatch):
    buffers = {"out": torch.zeros(3), "pair": (torch.ones(2), torch.ones(2))}
    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(len(steps)))

    def fake_compile(module, mode=None):
        assert mode == "reduce-overhead"

        def replay(x, blocks=None):  # a CUDA graph: writes into the same output buffers every replay
            buffers["out"].copy_(x)
            return {1: buffers["out"], 2: buffers["pair"]} if blocks else buffers["out"]

        return replay

    call = CompiledCall(torch.nn.Identity(), "reduce-overhead", compiler=fake_compile)
    first = call(torch.tensor([1.0, 2.0, 3.0]))
    second = call(torch.tensor([4.0, 5.0, 6.0]), blocks=(1, 2))
    assert steps == [0, 1]  # one new step before each replay
    assert first.tolist() == [1.0, 2.0, 3.0]  # the first result survives the second replay
    assert first.data_ptr() != buffers["out"].data_ptr() and second[1].data_ptr() != buffers["out"].data_ptr()
    assert second[2][0].data_ptr() != buffers["pair"][0].data_ptr()


def test_compiled_call_without_cuda_graphs_returns_what_the_compiled_module_returns(monkeypatch):
    out = torch.zeros(2)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: pytest.fail("no graphs here"))
    call = CompiledCall(torch.nn.Identity(), None, compiler=lambda module, mode=None: lambda x: out)
    assert call(torch.ones(1)) is out


def test_compile_option_matches_eager_on_the_cpu(tiny_components, tiny_config, rng):
    """Issue 10's "done when": compile=True gives features within 1e-5 of eager on the CPU (tiny model)."""
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    eager = DiftExtractor(tiny_components, tiny_config).extract(images)
    compiled = DiftExtractor(tiny_components, tiny_config.replace(compile=True))
    assert compiled.backend.compiled and compiled.backend.compile_mode is None  # CPU: Inductor, no CUDA graphs
    first = compiled.extract(images)
    # Inductor fuses elementwise chains and reorders reductions (GroupNorm, softmax): fp32 summation order only,
    # ~1e-7 per op and ~1e-6 over the network (observed 1.0e-6); 1e-5 is the bound and still fails on any
    # real difference (another noise, block, layout or timestep: O(1)).
    assert relative_l2(first, eager) < 1e-5
    assert torch.equal(compiled.extract(images), first)  # the compiled graph is reused: same kernels, same bits


# -- batch_size="auto" -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "per_image", "expected"),
    [
        (80 * 2**30, 2**30, MAX_AUTO_BATCH),  # 0.7 * 80 = 56 images fit: capped
        (10 * 2**30, 2**30, 7),  # floor(0.7 * 10)
        (2**30, 2**30, 1),  # 0.7 of one image: still 1 (the user gets an OOM message rather than nothing)
        (0, 2**30, 1),
    ],
)
def test_batch_size_for_memory(free, per_image, expected):
    assert batch_size_for_memory(free, per_image) == expected


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"free_bytes": 10, "per_image_bytes": 0}, "per_image_bytes"),
        ({"free_bytes": -1, "per_image_bytes": 1}, "free_bytes"),
        ({"free_bytes": 10, "per_image_bytes": 1, "fraction": 1.5}, "fraction"),
        ({"free_bytes": 10, "per_image_bytes": 1, "cap": 0}, "cap"),
    ],
)
def test_batch_size_for_memory_refuses_nonsense(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        batch_size_for_memory(**kwargs)


def test_peak_activation_bytes_follows_what_is_alive():
    """Two linear layers on meta: the peak is the first output plus the second (both alive at once), not their
    sum over the pass plus dead temporaries; nothing is allocated."""
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(100, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))
        x = torch.empty(8, 100)
    peak = peak_activation_bytes(net, x)
    # Linear 1 out: 8x1000 fp32 = 32000 B; ReLU out (not in place) 32000 B while Linear 1's is alive; then Linear
    # 2's 320 B while ReLU's is alive and Linear 1's has been freed.
    assert peak == 32000 + 32000


def test_sd21_per_image_estimate_at_768_bf16():
    """The real SD 2.1 architecture (meta: no weights, no compute) at the preset's 768², bf16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dift_fast.unet import TruncatedUNet, VaeEncoder

    def read(component):
        return json.loads((SD21 / component / "config.json").read_text())

    with torch.device("meta"):
        network = TruncatedUNet(UNet2DConditionModel.from_config(read("unet")), 1)
        encoder = VaeEncoder(AutoencoderKL.from_config(read("vae")))
    est = estimate_per_image_memory(
        network.to(torch.bfloat16),
        encoder.to(torch.bfloat16),
        NetworkGeometry.of(network, encoder),
        torch.bfloat16,
        torch.device("cpu"),
        (768, 768),
        8,
        (77, 1024),
    )
    # Lower bounds from the architecture by hand, at latent 96² (bf16, 2 B): the skips the down path keeps for
    # the up blocks (conv_in + 2 resnets + downsampler per level: 3 maps of 320 ch at 96², 3 of 640 at 48², 3 of
    # 1280 at 24², 3 of 1280 at 12²) and, alive with them, the 4x640-wide GEGLU projection at 96² (9216 x 2560).
    skips = 2 * (3 * 320 * 96 * 96 + 3 * 640 * 48 * 48 + 3 * 1280 * 24 * 24 + 3 * 1280 * 12 * 12)
    geglu = 2 * 9216 * 2560
    assert skips + geglu < est.network_row < 4 * (skips + geglu)
    # The VAE encoder at full resolution: at least two 128-channel 768² maps (a resnet's input and output).
    assert 2 * 2 * 128 * 768 * 768 < est.encoder_image < 10 * 2 * 128 * 768 * 768
    assert est.total == max(8 * est.network_row, est.encoder_image) + est.held
    # and what that means on an H200 with 130 GiB free: between 16 and the cap
    assert batch_size_for_memory(130 * 2**30, est.total) == MAX_AUTO_BATCH
    assert 16 <= batch_size_for_memory(40 * 2**30, est.total) < MAX_AUTO_BATCH


def test_auto_batch_size_rules(tiny_components, tiny_config):
    cpu = TorchBackend(tiny_components.network, tiny_components.encoder, torch.device("cpu"), torch.float32)
    assert resolve_batch_size(tiny_config, cpu, (77, 32)) == 1  # CPU: image by image anyway
    assert resolve_batch_size(tiny_config.replace(batch_size=5), cpu, None) == 5

    class FakeCudaBackend:  # what the estimate is handed; it is replaced by `estimate` below
        name, device, dtype = "torch", torch.device("cuda"), torch.bfloat16
        network = encoder = geometry = None

    per_image = PerImageMemory(network_row=100 * MiB, encoder_image=300 * MiB, held=10 * MiB, ensemble_size=2)
    free = {"bytes": 10 * 2**30}

    def resolve(config, backend=None):
        backend = backend or FakeCudaBackend()
        return resolve_batch_size(
            config, backend, None, free_bytes=lambda device: free["bytes"], estimate=lambda *args: per_image
        )

    assert resolve(tiny_config) == int(0.7 * 10 * 2**30) // (310 * MiB)  # the encoder's 300 MiB > 2 x 100
    free["bytes"] = 0
    assert resolve(tiny_config) == 1
    assert resolve(tiny_config.replace(image_size=None)) == 1  # no fixed size: nothing to size it with

    class FakeOrt(FakeCudaBackend):
        name = "onnxruntime"

    assert resolve(tiny_config, FakeOrt()) == 1

    def failing(*args):
        raise RuntimeError("meta cannot run this")

    assert resolve_batch_size(tiny_config, FakeCudaBackend(), None, free_bytes=lambda d: 2**40, estimate=failing) == 1


def test_auto_batch_size_estimates_the_tiny_model_on_meta(tiny_components):
    backend = TorchBackend(tiny_components.network, tiny_components.encoder, torch.device("cpu"), torch.float32)
    args = (backend.network, backend.encoder, backend.geometry, backend.dtype, backend.device, (64, 48))
    one = estimate_per_image_memory(*args, 1, (77, 32))
    two = estimate_per_image_memory(*args, 2, (77, 32))
    assert one.network_row > 0 and one.encoder_image > 0
    assert two.network_row == one.network_row and two.total >= 2 * one.network_row
    # the caller's and the backend's modules were not touched (the trace runs on a meta copy)
    assert all(p.device.type == "cpu" for p in backend.network.parameters())


def test_extractor_resolves_auto_and_reports_the_number(tiny_components, tiny_config):
    assert DiftConfig().batch_size == "auto"
    ext = DiftExtractor(tiny_components, tiny_config)
    assert ext.config.batch_size == 1


# -- configuration, identity, command line -----------------------------------------------------------------------


def test_config_fields_validate():
    assert DiftConfig(compile=True, tf32=True, batch_size=4).batch_size == 4
    for field, value in (("compile", "yes"), ("tf32", 1), ("batch_size", "big"), ("batch_size", 0)):
        with pytest.raises(ValueError, match=f"DiftConfig.{field}="):
            DiftConfig(**{field: value})
    cfg = DiftConfig(compile=True, tf32=True)
    assert DiftConfig.from_dict(cfg.to_dict()) == cfg


def test_accelerated_backends_refuse_torch_only_options(tiny_components, tiny_config):
    for field in ("compile", "tf32"):
        with pytest.raises(ValueError, match=f"{field}=True applies to the torch backend only"):
            create_backend(
                "onnxruntime",
                tiny_components,
                torch.device("cpu"),
                torch.float32,
                None,
                config=tiny_config.replace(backend="onnxruntime", **{field: True}),
            )


def _identity(**changes):
    base = {
        "t": 261,
        "block": 1,
        "ensemble_size": 8,
        "prompt": "",
        "seed": 0,
        "image_size": (768, 768),
        "backend": "torch",
        "graph_dtype": "fp32",
        "device_type": "cuda",
    }
    model = {"backbone": "sd", "content_hash": "0" * 64, "schedule": {"name": "x"}}
    return feature_identity(model, **{**base, **changes})


def test_tf32_is_in_the_feature_identity_only_when_it_ran():
    assert "tf32" not in _identity()  # identities without TF32 are what they were before the field existed
    assert _identity(tf32=True)["tf32"] is True and _identity(tf32=True) != _identity()
    with pytest.raises(ValueError, match="fp32"):
        _identity(graph_dtype="bf16", tf32=True)
    cfg = DiftConfig(tf32=True)
    assert ran_tf32("torch", "fp32", "cuda", cfg)
    assert not ran_tf32("torch", "bf16", "cuda", cfg)  # TF32 is an fp32 matter
    assert not ran_tf32("torch", "fp32", "cpu", cfg)  # no TF32 on CPUs
    assert not ran_tf32("onnxruntime", "fp32", "cuda", cfg)
    assert not ran_tf32("torch", "fp32", "cuda", DiftConfig())


def test_compile_and_batch_size_stay_out_of_the_identity(tiny_config):
    ident = config_identity(tiny_config)
    assert config_identity(tiny_config.replace(compile=True, batch_size=7)) == ident
    assert config_identity(tiny_config.replace(tf32=True)) == ident  # on the CPU TF32 does not exist


def test_cli_options(tiny_model_dir):
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    args = parser.parse_args(["--batch-size", "auto", "--compile", "--tf32"])
    assert config_overrides(args) == {"batch_size": "auto", "compile": True, "tf32": True}
    assert config_overrides(parser.parse_args(["--batch-size", "3"])) == {"batch_size": 3}
    assert config_overrides(parser.parse_args([])) == {}
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--batch-size", bad])


def test_twin_latents_and_keys_on_the_cpu_are_unchanged():
    """The pinned, non-blocking copies (keys, twin noise) apply to CUDA only; on the CPU the values are the
    contract's as before (kernel == twin, bit for bit)."""
    g = torch.Generator().manual_seed(3)
    mean, std = torch.randn(2, 4, 3, 5, generator=g), torch.rand(2, 4, 3, 5, generator=g)
    keys = [7, 2**64 - 1]
    native = ops.ensemble_latents(mean, std, keys, 5, 3, 0.8, 0.6, 0.18215)
    twin = _torch_impl.ensemble_latents(mean, std, keys, 5, 3, 0.8, 0.6, 0.18215)
    assert torch.equal(native, twin)


def test_cpu_onnxruntime_is_one_flag(tiny_model_dir, tmp_path, monkeypatch):
    """The CPU path the README documents: ``--backend onnxruntime`` with no export folder exports into the cache
    on first use, reuses it after, and gives torch's fp32 features."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (pip install dift-fast[onnx])")
    from PIL import Image

    from dift_fast.cli import main
    from dift_fast.io import load_features

    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    common = [
        "--model",
        str(tiny_model_dir),
        "--image-size",
        "64x48",
        "--ensemble-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(["extract", str(image), "--out", str(tmp_path / "t.safetensors"), *common]) == 0
    for run in ("o1", "o2"):
        assert (
            main(
                [
                    "extract",
                    str(image),
                    "--out",
                    str(tmp_path / f"{run}.safetensors"),
                    "--backend",
                    "onnxruntime",
                    *common,
                ]
            )
            == 0
        )
        exports = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
        assert len(exports) == 1  # exported once, into the cache; the second run reuses it
    ref = load_features(tmp_path / "t.safetensors").features
    for run in ("o1", "o2"):
        # onnxruntime's fp32 kernels vs torch's: summation order only; the bound of tests/test_export.py (1e-4)
        assert relative_l2(load_features(tmp_path / f"{run}.safetensors").features, ref) < 1e-4


def test_cached_onnxruntime_export_is_found_without_loading_the_networks(tiny_model_dir, tmp_path, monkeypatch):
    """Later runs of the one-flag path find the cached export through the index keyed by the weight files' content
    hash: the UNet and VAE are not loaded (nor hashed) again."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (pip install dift-fast[onnx])")
    from dift_fast.backbones.base import DiftComponents

    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    kwargs = dict(backend="onnxruntime", image_size=(64, 48), ensemble_size=2, device="cpu")
    first = DiftExtractor.from_pretrained(str(tiny_model_dir), **kwargs)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = first.extract([image])

    def no_loading(self, *args, **kw):
        raise AssertionError("the networks were loaded although the export is cached")

    with monkeypatch.context() as m:
        m.setattr(DiftComponents, "load_networks", no_loading)
        second = DiftExtractor.from_pretrained(str(tiny_model_dir), **kwargs)
        assert torch.equal(second.extract([image]), expected)
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 1


# -- the non-finite check without a host wait per micro-batch (item 10) -------------------------------------------


def _explicit_noise(n: int, bad: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit noise for n tiny-model images (E = 2, latent 4x6x8); the images in ``bad`` get an infinite ε₁."""
    g = torch.Generator().manual_seed(7)
    eps1, eps2 = torch.randn(n, 2, 4, 6, 8, generator=g), torch.randn(n, 2, 4, 6, 8, generator=g)
    for i in bad:
        eps1[i] = float("inf")
    return eps1, eps2


def test_non_finite_images_are_named_and_the_others_kept(tiny_components, tiny_config, rng, tmp_path):
    from PIL import Image

    images = []
    for i in range(5):  # files, so that each image has its own name
        images.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images[-1])
    ext = DiftExtractor(tiny_components, tiny_config.replace(batch_size=2))  # micro-batches [0, 1], [2, 3], [4]
    prepared = ext.prepare(images)
    noise = _explicit_noise(5, bad={1, 4})
    with pytest.raises(FloatingPointError, match="non-finite") as err:
        ext.extract_prepared(prepared, noise=noise)
    assert err.value.names == [prepared[1].name, prepared[4].name]
    assert all(prepared[i].name not in str(err.value) for i in (0, 2, 3))
    kept = err.value.batch
    assert kept.names == [prepared[i].name for i in (0, 2, 3)]
    assert kept.image_keys == [prepared[i].key for i in (0, 2, 3)]
    good = [0, 2, 3]
    alone = ext.extract_prepared([prepared[i] for i in good], noise=tuple(x[good] for x in noise))
    assert torch.equal(kept.features, alone.features)  # CPU: image by image, bit for bit
    assert torch.isfinite(kept.features).all()


def test_all_non_finite_keeps_nothing(tiny_components, tiny_config, rng):
    ext = DiftExtractor(tiny_components, tiny_config)
    prepared = ext.prepare([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)])
    with pytest.raises(FloatingPointError) as err:
        ext.extract_prepared(prepared, noise=_explicit_noise(1, bad={0}))
    assert err.value.names == [prepared[0].name] and err.value.batch is None


def test_finiteness_is_read_once_per_call(tiny_components, tiny_config, rng, monkeypatch):
    from dift_fast import extractor as extractor_module

    reads = []
    real = extractor_module._NonFiniteFlags.bad_indices
    monkeypatch.setattr(
        extractor_module._NonFiniteFlags, "bad_indices", lambda self, n: reads.append(n) or real(self, n)
    )
    ext = DiftExtractor(tiny_components, tiny_config.replace(batch_size=2))
    ext.extract([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(5)])  # three micro-batches
    assert reads == [5]


def test_configs_that_differ_only_in_batch_size_describe_the_same_extraction(tiny_components, tiny_config):
    ext = DiftExtractor(tiny_components, tiny_config)  # resolves "auto" to a number
    assert ext.config.batch_size == 1 and ext.config == tiny_config
    assert DiftConfig(batch_size=4) == DiftConfig() and DiftConfig(tf32=True) != DiftConfig()
