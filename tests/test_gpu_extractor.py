"""The extractor on a CUDA GPU against the CPU (tiny random model): fp32, bf16, the noise contract, batching.

Every test here needs a CUDA device and skips without one (`pytest -m gpu`; scripts/gpu_check.sh runs them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dift_fast import DiftConfig, DiftExtractor, _torch_impl, ops
from dift_fast.loading import load_components
from dift_fast.noise import DIFFUSION_STREAM, POSTERIOR_STREAM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SQRT_A, SQRT_1MA, SCALE = 0.80973, 0.58680, 0.18215  # t = 261, SD's VAE scaling factor
FP32_EPS = 2.0**-23  # float32 spacing at 1: one ulp of x is at most FP32_EPS * |x|


@pytest.fixture(scope="module")
def make_extractor(tiny_model_dir):
    """Extractors on the tiny model, one set of components per (device, dtype) (backends run copies of them)."""
    cache: dict[tuple, object] = {}

    def make(device: str, dtype: str | None = None, **overrides) -> DiftExtractor:
        config = DiftConfig.from_preset(
            "spair",
            **{"model": str(tiny_model_dir), "ensemble_size": 2, "image_size": (64, 48), "device": device,
               "dtype": dtype, **overrides},
        )  # fmt: skip
        key = (device, dtype)
        if key not in cache:
            cache[key] = load_components(config.model, None, config.up_ft_index)
        return DiftExtractor(cache[key], config)

    return make


def random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def test_fp32_cuda_features_match_fp32_cpu(make_extractor):
    images = random_images(3)
    cpu = make_extractor("cpu", "fp32").extract(images)
    cuda = make_extractor("cuda", "fp32").extract(images)
    assert cuda.dtype == torch.float32 and cuda.shape == cpu.shape
    # Same noise (the contract), IEEE fp32 on both: only the order of the sums inside convolutions and matmuls
    # differs (cuDNN/cuBLAS vs the CPU's kernels), ~1e-7 relative per op and ~1e-6 over the tiny model's ~20
    # layers. 1e-4 leaves 100x margin and still fails on TF32 (10-bit mantissa: ~1e-3 here) or any real defect
    # (wrong noise, block or timestep: O(1)).
    err = relative_l2(cuda, cpu)
    assert err < 1e-4, f"relative L2 {err:.2e}: is TF32 on for fp32 (torch.backends.cudnn.allow_tf32)?"


def test_bf16_cuda_features_are_close_to_fp32_cpu(make_extractor):
    images = random_images(3, seed=1)
    cpu = make_extractor("cpu", "fp32").extract(images)
    bf16 = make_extractor("cuda", "bf16").extract(images)
    assert bf16.dtype == torch.float32  # features come back in fp32 unless keep_dtype
    # bf16 keeps 8 mantissa bits (2^-9 relative rounding per op); over ~20 layers this adds up to a few percent,
    # the bound the CPU test uses for bf16 (tests/test_engine.py::test_half_precision_is_close_to_fp32).
    assert relative_l2(bf16, cpu) < 0.05
    # ...and the default CUDA dtype is bf16
    assert make_extractor("cuda").dtype == torch.bfloat16


def test_cuda_latents_follow_the_noise_contract():
    """The latents the extractor draws on CUDA (kernel or twin, whichever runs) equal the CPU twin's to a few ulp."""
    g = torch.Generator().manual_seed(0)
    b, e = 3, 4
    mean, std = torch.randn(b, 4, 16, 12, generator=g), torch.rand(b, 4, 16, 12, generator=g) * 0.5
    keys, seed = [5, 2**63 + 11, 12345678901234], 2**40 + 7
    cuda = ops.ensemble_latents(mean.cuda(), std.cuda(), keys, seed, e, SQRT_A, SQRT_1MA, SCALE).cpu()
    cpu = _torch_impl.ensemble_latents(mean, std, keys, seed, e, SQRT_A, SQRT_1MA, SCALE)
    # The contract: each normal within 4 ulp of the CPU's (CUDA's double log/sin/cos differ in the last bits of a
    # double, so nearly all normals are bit-identical). A latent is √ᾱ·(μ + σ·ε₁)·s + √(1−ᾱ)·ε₂ with one rounding
    # per op (no FMA on either side): a 4-ulp change of ε₁/ε₂ moves it by at most 4 ulp of each term plus one
    # rounding of each of the 5 ops, i.e. by at most 9 FP32_EPS times the sum of the terms' magnitudes.
    eps1 = _torch_impl.ensemble_noise(keys, seed, e, (4, 16, 12), POSTERIOR_STREAM).flatten(0, 1)
    eps2 = _torch_impl.ensemble_noise(keys, seed, e, (4, 16, 12), DIFFUSION_STREAM).flatten(0, 1)
    m, s = mean.repeat_interleave(e, 0), std.repeat_interleave(e, 0)
    terms = SQRT_A * SCALE * (m.abs() + (s * eps1).abs()) + SQRT_1MA * eps2.abs()
    assert ((cuda - cpu).abs() <= 9 * FP32_EPS * terms).all()
    assert (cuda == cpu).float().mean().item() >= 0.999


def test_cuda_extractor_uses_the_contract_noise(make_extractor):
    ext = make_extractor("cuda", "fp32")
    images = random_images(2, seed=2)
    prepared = ext.prepare(images)
    keys = [p.key for p in prepared]  # seed 0, E = 2, the latent of a 64x48 image: [B, E, 4, 6, 8]
    eps = tuple(_torch_impl.ensemble_noise(keys, 0, 2, (4, 6, 8), s) for s in (POSTERIOR_STREAM, DIFFUSION_STREAM))
    # the CPU twin's contract noise given explicitly vs the noise drawn on the GPU: the same up to the last bits
    # of a few normals (previous test), so the features agree to fp32 rounding through the network
    torch.testing.assert_close(ext.extract(images).cpu(), ext.extract(images, noise=eps).cpu(), rtol=1e-5, atol=1e-5)


def test_batched_cuda_features_match_one_by_one(make_extractor):
    images = random_images(4, seed=3)
    batched = make_extractor("cuda", "fp32", batch_size=4).extract(images)
    single = torch.cat([make_extractor("cuda", "fp32", batch_size=1).extract(img) for img in images])
    # same noise per image (keyed by its pixels); one network call for 4 images may pick other cuDNN/cuBLAS
    # algorithms than for 1, i.e. another summation order: fp32 rounding, ~1e-6 relative (README, Determinism)
    assert relative_l2(batched, single) < 1e-5
    for i in range(4):  # and no image takes another's place
        assert relative_l2(batched[i], single[i]) < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_non_finite_features_raise_on_cuda(make_extractor, dtype):
    ext = make_extractor("cuda", dtype)
    shape = (1, 2, 4, 6, 8)
    bad = torch.full(shape, float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        ext.extract(random_images(1), noise=(bad, torch.zeros(shape)))
    assert torch.isfinite(ext.extract(random_images(1))).all()  # the extractor is still usable afterwards


# -- issue 10: fp16 attention, channels-last, compile and CUDA graphs, TF32, batch_size="auto" --------------------


def test_fp16_cuda_keeps_sdpa_and_is_close_to_fp32_cpu(make_extractor):
    """Item 5: fp16 on CUDA runs SDPA's fused attention (no classic processor, no score tensor) and its features
    stay within the fp16 bound of the CPU test of fp32."""
    images = random_images(2, seed=4)
    cpu = make_extractor("cpu", "fp32").extract(images)
    fp16 = make_extractor("cuda", "fp16")
    assert "classic" not in fp16.backend.attention, fp16.backend.attention
    assert any(k in fp16.backend.attention for k in ("sdpa:flash", "sdpa:efficient", "sdpa:cudnn"))
    out = fp16.extract(images)
    assert torch.isfinite(out).all()
    # fp16 keeps 11 mantissa bits (2^-12 relative per op): under a percent over the tiny model's ~20 layers, the
    # bound of tests/test_engine.py::test_half_precision_is_close_to_fp32
    assert relative_l2(out, cpu) < 0.01


def test_fp16_cuda_uses_the_classic_processor_only_where_sdpa_runs_math(tiny_model_dir):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dift_fast.backends import TorchBackend

    comps = load_components(str(tiny_model_dir), None, 1)
    with sdpa_kernel([SDPBackend.MATH]):
        backend = TorchBackend(comps.network, None, torch.device("cuda"), torch.float16)
    assert backend.attention.get("classic", 0) > 0
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    ref = TorchBackend(comps.network, None, torch.device("cpu"), torch.float32).features(x, 261, ctx)
    assert relative_l2(backend.features(x.cuda(), 261, ctx.cuda()).float(), ref) < 0.01  # the fp16 bound above


def test_channels_last_on_cuda_matches_nchw(tiny_model_dir):
    from dift_fast.backends import TorchBackend

    comps = load_components(str(tiny_model_dir), None, 1)
    dev = torch.device("cuda")
    fast = TorchBackend(comps.network, comps.encoder, dev, torch.float32)  # the CUDA default: channels-last
    plain = TorchBackend(comps.network, comps.encoder, dev, torch.float32, channels_last=False)
    assert fast.channels_last and not plain.channels_last
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(4, 4, 6, 8, generator=g).cuda(), torch.randn(4, 77, 32, generator=g).cuda()
    out, ref = fast.features(x, 261, ctx), plain.features(x, 261, ctx)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # other cuDNN algorithms for NHWC, fp32 without TF32: summation order only (~1e-6); 1e-5 as on the CPU
    assert relative_l2(out, ref) < 1e-5
    mean = ops.ensemble_reduce(out, 2)  # the kernel reads the NHWC buffer in place
    assert mean.is_contiguous() and torch.equal(mean, ops.ensemble_reduce(out.contiguous(), 2))
    images = torch.rand(2, 3, 48, 64, generator=g).cuda() * 2 - 1
    (m1, s1), (m2, s2) = fast.encode(images), plain.encode(images)
    assert m1.is_contiguous() and relative_l2(m1, m2) < 1e-5 and relative_l2(s1, s2) < 1e-5


def test_compiled_network_replays_cuda_graphs_and_matches_eager(tiny_model_dir):
    """compile=True on CUDA with static shapes: torch.compile(mode="reduce-overhead") records CUDA graphs; the
    results equal eager within fp32 rounding, survive the next replay, and a smaller last batch runs too."""
    from dift_fast.backends import TorchBackend

    comps = load_components(str(tiny_model_dir), None, 1)
    dev = torch.device("cuda")
    eager = TorchBackend(comps.network, None, dev, torch.float32)
    compiled = TorchBackend(comps.network, None, dev, torch.float32, compile=True, static_shapes=True)
    assert compiled.compile_mode == "reduce-overhead"
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 4, 6, 8, generator=g).cuda(), torch.randn(4, 77, 32, generator=g).cuda())
               for _ in range(3)]
    batches.append((batches[0][0][:2], batches[0][1][:2]))  # the remainder of an extraction: another shape
    outs = [compiled.features(x, 261, ctx) for x, ctx in batches]  # warm-up, record, replays
    for (x, ctx), out in zip(batches, outs):
        # Inductor's fused kernels: fp32 summation order only; 1e-5 as the CPU test of compile
        assert relative_l2(out, eager.features(x, 261, ctx)) < 1e-5
    assert relative_l2(outs[3], outs[0][:2]) < 1e-5


def test_tf32_is_scoped_to_the_calls_and_named_in_the_identity(make_extractor):
    from dift_fast.identity import extractor_identity
    from dift_fast.run_flags import tf32_state

    before = (torch.backends.cudnn.benchmark, tf32_state())
    images = random_images(2, seed=5)
    plain = make_extractor("cuda", "fp32")
    tf32 = make_extractor("cuda", "fp32", tf32=True)
    ref = plain.extract(images)
    out = tf32.extract(images)
    assert (torch.backends.cudnn.benchmark, tf32_state()) == before  # nothing left behind
    # TF32 keeps a 10-bit mantissa (2^-11 relative per op): ~1e-3 over the tiny model; 1e-2 catches real defects
    assert relative_l2(out, ref) < 1e-2
    assert extractor_identity(tf32)["tf32"] is True and "tf32" not in extractor_identity(plain)


def test_auto_batch_size_on_cuda_fits_and_gives_the_same_features(make_extractor):
    auto = make_extractor("cuda", "fp32")  # batch_size defaults to "auto"
    assert 1 <= auto.config.batch_size <= 32
    images = random_images(5, seed=6)
    single = make_extractor("cuda", "fp32", batch_size=1).extract(images)
    # another batch: other cuDNN/cuBLAS algorithms, fp32 rounding only (test_batched_cuda_features_match_one_by_one)
    assert relative_l2(auto.extract(images), single) < 1e-5


def test_memory_estimate_bounds_the_measured_peak(tiny_model_dir):
    """The meta-device estimate of one network row against torch's measured peak at 1024² (fp16): the estimate
    with its safety margin covers the real peak (cuDNN workspaces included), and is not wildly above it."""
    from dift_fast.backends import TorchBackend
    from dift_fast.batch_size import MEMORY_FRACTION, estimate_per_image_memory

    comps = load_components(str(tiny_model_dir), None, 1)
    dev = torch.device("cuda")
    backend = TorchBackend(comps.network, None, dev, torch.float16, channels_last=False)
    est = estimate_per_image_memory(backend.network, None, backend.geometry, torch.float16, dev, (1024, 1024), 8,
                                    (77, 32))
    rows = 8
    x = torch.randn(rows, 4, 128, 128, device=dev, dtype=torch.float16)
    ctx = torch.randn(rows, 77, 32, device=dev, dtype=torch.float16)
    backend.features(x, 261, ctx)  # warm-up: cuDNN handles and workspaces
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = backend.features(x, 261, ctx)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    estimated = rows * est.network_row
    assert measured <= estimated / MEMORY_FRACTION, (measured, estimated)
    assert estimated <= 4 * max(measured, 1), (measured, estimated)
