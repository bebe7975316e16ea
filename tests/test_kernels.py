"""The native ensemble kernels (kernels/, dift_fast._C) against the numpy noise reference and the pure-torch twins."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_noise import KAT  # tests/ is on sys.path (rootdir-relative, no package)

from dift_fast import _native, _torch_impl, noise, ops

C = pytest.importorskip("dift_fast._C", reason=f"dift_fast._C is not built: {_native.build_record()['reason']}")


def cuda_kernels_skip_reason() -> str | None:
    """Why the CUDA kernel tests cannot run here (no GPU, or a build without usable CUDA kernels), or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    reason = _native.cuda_unusable_reason(torch.cuda.current_device())
    return None if reason is None else f"the CUDA kernels cannot run here: {reason}"


_CUDA_SKIP = cuda_kernels_skip_reason()
needs_gpu = pytest.mark.skipif(_CUDA_SKIP is not None, reason=_CUDA_SKIP or "")
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SQRT_A, SQRT_1MA, SCALE = 0.80973, 0.58680, 0.18215  # t = 261, SD's VAE scaling factor


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (via the monotonic integer order of the bit patterns)."""

    def ordered(x):
        i = np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(a) - ordered(b))


def cpp_noise(keys, seed, ensemble, numel, stream_id, device="cpu"):
    out = torch.empty((len(keys), ensemble, numel), dtype=torch.float32, device=device)
    keys_t = torch.tensor([k - (1 << 64) if k >> 63 else k for k in keys], dtype=torch.int64, device=device)
    if device == "cpu":
        C.contract_noise_cpu(keys_t, out, seed, stream_id)
    else:
        C.contract_noise_cuda(keys_t, out, seed, stream_id, stream=torch.cuda.current_stream().cuda_stream)
    return out


def latents_inputs(b=3, c=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, c, h, w, generator=g)
    std = torch.rand(b, c, h, w, generator=g) * 0.5
    keys = [int(k) for k in torch.randint(0, 2**62, (b,), generator=g)]
    keys[-1] |= 1 << 63  # exercise keys above 2**63
    return mean, std, keys


# ------------------------------------------------------------------------------------------------- Philox, normals
@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_known_answers_cpp(counter, key, expected):
    out = torch.zeros(1, 4, dtype=torch.uint32)
    C.philox4x32_10_cpu(torch.tensor([counter], dtype=torch.uint32), key[0], key[1], out)
    assert [int(x) & 0xFFFFFFFF for x in out[0]] == list(expected)


def test_philox_stream_bit_identical_to_numpy(rng):
    counters = rng.integers(0, 2**32, size=(4096, 4), dtype=np.uint32)
    for k0, k1 in [(0, 0), (0xFFFFFFFF, 1), tuple(int(x) for x in rng.integers(0, 2**32, 2))]:
        out = torch.zeros(4096, 4, dtype=torch.uint32)
        C.philox4x32_10_cpu(torch.from_numpy(counters), k0, k1, out)
        np.testing.assert_array_equal(out.numpy(), noise.philox4x32_10(counters, np.array([k0, k1], np.uint32)))


@pytest.mark.parametrize("numel", [4 * 16 * 12, 1027])  # 1027: a partial last Philox group
def test_normals_within_4_ulp_of_numpy(numel):
    keys = [0, 0x0123456789ABCDEF, 2**64 - 1]
    seed = 0xDEADBEEF12345678
    got = cpp_noise(keys, seed, 3, numel, noise.DIFFUSION_STREAM).numpy()
    want = np.stack([noise.ensemble_normals(k, seed, 3, numel, noise.DIFFUSION_STREAM) for k in keys])
    dist = ulp_distance(got, want)
    assert dist.max() <= 4  # the contract
    # both sides work in double and round once, so nearly all normals are bit-identical
    assert (dist == 0).mean() >= 0.999


def test_noise_statistics():
    """Mean, variance, normality and independence of the contract noise, each with a bound set by the sample size.

    The inputs are fixed, so the test is deterministic; the bounds are 5-6 standard errors (or the KS 99.9%
    point), which a correct generator passes except with negligible probability over the choice of inputs.
    """
    keys = [7, 7 + (1 << 32), 8, 0xFFFFFFFF00000007]  # same low word (shared c3), same high word, ...
    e, numel = 8, 4 * 32 * 32
    eps1 = cpp_noise(keys, 42, e, numel, noise.POSTERIOR_STREAM).double()
    eps2 = cpp_noise(keys, 42, e, numel, noise.DIFFUSION_STREAM).double()
    other_seed = cpp_noise(keys, 43, e, numel, noise.DIFFUSION_STREAM).double()
    x = torch.cat([eps1, eps2]).flatten()
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    # Kolmogorov–Smirnov distance to N(0, 1); 1.95/sqrt(n) is the asymptotic 99.9% point
    xs = np.sort(x.numpy())
    cdf = 0.5 * (1 + np.vectorize(math.erf)(xs / math.sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n)

    # Pairwise correlations of rows of numel samples: each ~ N(0, 1/numel) when independent; 6 sigma covers the max
    # over these ~1000 pairs.
    bound = 6 / math.sqrt(numel)
    rows = {"posterior": eps1.reshape(-1, numel), "diffusion": eps2.reshape(-1, numel)}
    for name, r in rows.items():
        corr = torch.corrcoef(r)  # members and images of one stream
        off = corr[~torch.eye(len(r), dtype=torch.bool)]
        assert off.abs().max() < bound, name
    cross = (rows["posterior"] * rows["diffusion"]).mean(1)  # ε₁ vs ε₂ of the same member and image
    assert cross.abs().max() < bound
    seeds = (eps2 * other_seed).reshape(-1, numel).mean(1)  # the same member under another seed
    assert seeds.abs().max() < bound
    # neighbours inside one Philox block (Box–Muller pairs and across pairs) and across blocks
    flat = eps2.reshape(-1, numel)
    for lag in (1, 2, 3, 4):
        assert (flat[:, :-lag] * flat[:, lag:]).mean().abs() < 5 / math.sqrt(flat[:, lag:].numel())


# ------------------------------------------------------------------------------------------------- ensemble_latents
@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("in_dtype", FLOAT_DTYPES)
def test_latents_native_equals_twin(in_dtype, out_dtype):
    mean, std, keys = latents_inputs()
    mean, std = mean.to(in_dtype), std.to(in_dtype)
    args = (mean, std, keys, 2**40 + 3, 5, SQRT_A, SQRT_1MA, SCALE, out_dtype)
    native = ops.ensemble_latents(*args, use_native=True)
    twin = ops.ensemble_latents(*args, use_native=False)
    assert native.dtype == out_dtype and native.shape == (15, 4, 6, 5)
    torch.testing.assert_close(native, twin, rtol=0, atol=0)


@pytest.mark.parametrize(("b", "c", "h", "w", "e"), [(1, 4, 8, 8, 1), (2, 3, 5, 3, 2), (0, 4, 4, 4, 3)])
def test_latents_shapes_and_partial_groups(b, c, h, w, e):
    mean, std, keys = latents_inputs(max(b, 1), c, h, w, seed=1)
    mean, std, keys = mean[:b], std[:b], keys[:b]
    args = (mean, std, keys, 9, e, SQRT_A, SQRT_1MA, SCALE)
    torch.testing.assert_close(ops.ensemble_latents(*args, use_native=True),
                               ops.ensemble_latents(*args, use_native=False), rtol=0, atol=0)


def test_latents_non_contiguous_inputs():
    mean, std, keys = latents_inputs(2, 4, 6, 6)
    mean_nc, std_nc = mean.transpose(2, 3), std.transpose(2, 3)
    assert not mean_nc.is_contiguous()
    args = (mean_nc, std_nc, keys, 5, 3, SQRT_A, SQRT_1MA, SCALE)
    torch.testing.assert_close(ops.ensemble_latents(*args, use_native=True),
                               ops.ensemble_latents(*args, use_native=False), rtol=0, atol=0)


def test_latents_independent_of_batch_position():
    mean, std, keys = latents_inputs(3)
    full = ops.ensemble_latents(mean, std, keys, 11, 2, SQRT_A, SQRT_1MA, SCALE, use_native=True)
    one = ops.ensemble_latents(mean[2:], std[2:], keys[2:], 11, 2, SQRT_A, SQRT_1MA, SCALE, use_native=True)
    torch.testing.assert_close(full[4:], one, rtol=0, atol=0)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_latents_rounding_of_special_values(out_dtype, rng):
    """Casts to fp16/bf16 (subnormals, ties, overflow, inf, NaN) match torch's .to(); σ = 0, √ᾱ = 1 passes μ."""
    bits = np.concatenate([
        rng.integers(0, 2**32, 3000, dtype=np.uint64),  # anything, NaNs included
        rng.integers(0x33000000, 0x38800000, 1000, dtype=np.uint64),  # fp16 subnormal range
        rng.integers(0x477FE000, 0x47800100, 500, dtype=np.uint64),  # around fp16 max and its rounding to inf
        np.array([0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x80000000, 0x3F808000, 0x3F818000]),
    ]).astype(np.uint32)
    bits = bits[: len(bits) // 4 * 4]
    mean = torch.from_numpy(bits.view(np.float32).copy()).reshape(1, 4, -1, 1)
    std = torch.zeros_like(mean)
    native = ops.ensemble_latents(mean, std, [3], 1, 1, 1.0, 0.0, 1.0, out_dtype, use_native=True).float()
    twin = ops.ensemble_latents(mean, std, [3], 1, 1, 1.0, 0.0, 1.0, out_dtype, use_native=False).float()
    assert torch.equal(native.isnan(), twin.isnan())
    finite = ~twin.isnan()
    assert torch.equal(native[finite].view(torch.int32), twin[finite].view(torch.int32))


@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16])
def test_latents_read_every_half_bit_pattern(in_dtype):
    bits = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16).view(in_dtype).reshape(1, 4, 128, 128)
    std = torch.zeros_like(bits)
    native = ops.ensemble_latents(bits, std, [1], 1, 1, 1.0, 0.0, 1.0, use_native=True)
    twin = ops.ensemble_latents(bits, std, [1], 1, 1, 1.0, 0.0, 1.0, use_native=False)
    assert torch.equal(native.isnan(), bits.float().isnan())
    finite = ~twin.isnan()
    assert torch.equal(native[finite].view(torch.int32), twin[finite].view(torch.int32))
    assert torch.equal(native[finite], bits.float()[finite])  # the exact widening (as values: ±0 may flip)


# ------------------------------------------------------------------------------------------------- ensemble_reduce
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    ("b", "e", "c", "h", "w"),
    [(2, 3, 40, 9, 11), (1, 1, 5, 8, 8), (3, 4, 1, 3, 70), (2, 6, 33, 4, 6), (1, 9, 8, 5, 13)],
)  # E = 6, 9: member batches of 4 plus a remainder; P = 24: vectors only; P = 65, 99, 210: vectors and a tail
def test_reduce_native_equals_twin(dtype, b, e, c, h, w):
    feats = torch.randn(b * e, c, h, w).to(dtype)
    mean_n, norm_n = ops.ensemble_reduce_normalized(feats, e, use_native=True)
    mean_t, norm_t = ops.ensemble_reduce_normalized(feats, e, use_native=False)
    torch.testing.assert_close(mean_n, mean_t, rtol=0, atol=0)
    assert norm_n.shape == (b, h, w, c) and norm_n.is_contiguous()
    # torch.linalg.vector_norm sums the C squares in its own order; the kernel uses a fixed chunked order
    # (identical on CPU and CUDA). The norms differ by float32 rounding of the sum only: a few ulp.
    assert ulp_distance(norm_n.numpy(), norm_t.numpy()).max() <= 4
    torch.testing.assert_close(ops.ensemble_reduce(feats, e, use_native=True), mean_t, rtol=0, atol=0)


def test_reduce_matches_torch_mean_and_normalize():
    b, e, c, h, w = 2, 8, 96, 12, 10
    feats = torch.randn(b * e, c, h, w, dtype=torch.float16)
    mean, normed = ops.ensemble_reduce_normalized(feats, e, use_native=True)
    ref = feats.float().reshape(b, e, c, h, w).mean(1)
    # torch.mean may sum the 8 members in another order: a few float32 ulp of the largest partial sum
    torch.testing.assert_close(mean, ref, rtol=1e-6, atol=1e-6)
    ref_norm = torch.nn.functional.normalize(ref, dim=1).permute(0, 2, 3, 1)
    torch.testing.assert_close(normed, ref_norm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(b, h, w), rtol=1e-5, atol=0)


def test_reduce_zero_vectors_and_empty_batch():
    feats = torch.zeros(4, 3, 2, 2)
    feats[:, :, 0, 0] = 1.0
    _mean, normed = ops.ensemble_reduce_normalized(feats, 2, use_native=True)
    assert normed[:, 1:].abs().sum() == 0 and normed[:, 1, 1].abs().sum() == 0
    torch.testing.assert_close(normed[:, 0, 0], torch.full((2, 3), 1 / math.sqrt(3)))
    empty_mean, empty_norm = ops.ensemble_reduce_normalized(torch.zeros(0, 3, 2, 2), 2, use_native=True)
    assert empty_mean.shape == (0, 3, 2, 2) and empty_norm.shape == (0, 2, 2, 3)


def test_reduce_keeps_the_sign_of_zero():
    """The sum starts from member 0 itself, as the twin does (0 + -0 would be +0)."""
    feats = torch.full((10, 3, 4, 4), -0.0)
    for use_native in (True, False):
        mean = ops.ensemble_reduce(feats, 5, use_native=use_native)
        assert torch.signbit(mean).all(), use_native


def test_reduce_non_contiguous_input():
    feats = torch.randn(6, 7, 5, 4).to(memory_format=torch.channels_last)
    assert not feats.is_contiguous()
    torch.testing.assert_close(ops.ensemble_reduce(feats, 3, use_native=True),
                               _torch_impl.ensemble_reduce(feats, 3), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- bad arguments
def test_bad_arguments_raise_from_the_raw_entries():
    mean, std, keys = latents_inputs(2)
    keys_t = torch.tensor([*keys[:1], 5], dtype=torch.int64)
    out = torch.empty(4, 4, 6, 5)
    good = dict(mean=mean, std=std, keys=keys_t, out=out, seed=1, ensemble_size=2, sqrt_alpha=1.0,
                sqrt_one_minus_alpha=0.0, scaling_factor=1.0)
    C.ensemble_latents_cpu(**good)
    cases = [
        (TypeError, "must be float32", dict(mean=mean.double(), std=std.double())),
        (TypeError, "dtype of mean", dict(std=std.half())),
        (TypeError, "int64 or uint64", dict(keys=keys_t.int())),
        (ValueError, "contiguous", dict(mean=mean.transpose(2, 3), std=std.transpose(2, 3))),
        (ValueError, "std must have shape", dict(std=std[:1])),
        (ValueError, "keys must have shape", dict(keys=keys_t[:1])),
        (ValueError, "out must have shape", dict(out=out[:3])),
        (ValueError, "ensemble_size", dict(ensemble_size=0)),
        (ValueError, "must be [B, C, h, w]", dict(mean=mean[0], std=std[0])),
    ]
    for exc, match, change in cases:
        with pytest.raises(exc, match=re.escape(match)):
            C.ensemble_latents_cpu(**{**good, **change})
    feats = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        C.ensemble_reduce_cpu(feats, torch.empty(1, 3, 2, 2), None, 3)
    with pytest.raises(TypeError, match="float32"):
        C.ensemble_reduce_cpu(feats, torch.empty(2, 3, 2, 2, dtype=torch.float16), None, 2)
    with pytest.raises(ValueError, match=r"normalized must have shape \[2, 2, 2, 3\]"):
        C.ensemble_reduce_cpu(feats, torch.empty(2, 3, 2, 2), torch.empty(2, 3, 2, 2), 2)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        C.ensemble_reduce_cpu(feats.int(), torch.empty(2, 3, 2, 2), None, 2)
    with pytest.raises(TypeError):  # a negative seed does not convert to uint64
        C.ensemble_latents_cpu(**{**good, "seed": -1})


def test_cpu_tensor_to_the_cuda_entry_raises():
    mean, std, _keys = latents_inputs(1)
    args = (mean, std, torch.tensor([5]), torch.empty(2, 4, 6, 5), 1, 2, 1.0, 0.0, 1.0)
    exc, match = (ValueError, "must be a CUDA tensor") if C.with_cuda else (RuntimeError, "without CUDA")
    with pytest.raises(exc, match=match):
        C.ensemble_latents_cuda(*args)
    with pytest.raises(exc, match=match):
        C.ensemble_reduce_cuda(torch.randn(2, 3, 2, 2), torch.empty(1, 3, 2, 2), None, 2)


def test_bad_arguments_raise_from_ops():
    mean, std, keys = latents_inputs(2)
    for use_native in (True, False):
        with pytest.raises(ValueError, match="image keys"):
            ops.ensemble_latents(mean, std, keys[:1], 1, 2, 1.0, 0.0, 1.0, use_native=use_native)
        with pytest.raises(TypeError, match="out_dtype"):
            ops.ensemble_latents(mean, std, keys, 1, 2, 1.0, 0.0, 1.0, torch.int8, use_native=use_native)
        with pytest.raises(TypeError, match="floating-point"):
            ops.ensemble_reduce(torch.ones(4, 2, 2, 2, dtype=torch.int32), 2, use_native=use_native)
        with pytest.raises(ValueError, match="ensemble_size"):
            ops.ensemble_reduce(torch.ones(4, 2, 2, 2), 0, use_native=use_native)
        with pytest.raises(ValueError, match="not a multiple"):
            ops.ensemble_reduce(torch.ones(5, 2, 2, 2), 2, use_native=use_native)
    with pytest.raises(_native.NativeUnavailableError, match="meta"):
        ops.ensemble_reduce(torch.empty(4, 2, 2, 2, device="meta"), 2, use_native=True)


# ------------------------------------------------------------------------------------------------- loading, status
def test_import_loads_no_extension():
    code = (
        "import sys, torch, dift_fast, dift_fast.ops\n"
        "assert 'dift_fast._C' not in sys.modules, 'imported at import time'\n"
        "dift_fast.ops.ensemble_reduce(torch.ones(2, 1, 1, 1), 2)\n"
        "assert 'dift_fast._C' in sys.modules, 'not used when built'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_extension_is_one_cached_error(monkeypatch):
    calls = []

    def fail(name):
        calls.append(name)
        raise ImportError("simulated missing build")

    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", None)
    monkeypatch.setattr(_native, "_cuda_reasons", {})
    monkeypatch.setattr(_native.importlib, "import_module", fail)
    feats = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(ops.ensemble_reduce(feats, 2), _torch_impl.ensemble_reduce(feats, 2))  # falls back
    for _ in range(2):
        with pytest.raises(_native.NativeUnavailableError, match="simulated missing build"):
            ops.ensemble_reduce(feats, 2, use_native=True)
    assert calls == ["dift_fast._C"]
    status = ops.kernel_status()
    assert not status["cpu"]["usable"] and "simulated" in status["cpu"]["reason"]
    assert not status["cuda"]["usable"]


def test_kernel_status_reports_the_build():
    status = ops.kernel_status()
    assert status["cpu"] == {"built": True, "usable": True, "reason": None}
    assert status["cuda"]["built"] is C.with_cuda
    assert status["openmp"] is C.build_info()["openmp"]
    assert "-ffp-contract=off" in status["build"]["cxx_flags"]
    if status["cuda"]["usable"]:
        assert status["cuda"]["reason"] is None and torch.cuda.is_available()
    else:
        assert status["cuda"]["reason"]  # says why


def test_extractor_path_uses_the_kernels_by_default():
    mean, std, keys = latents_inputs(2)
    auto = ops.ensemble_latents(mean, std, keys, 3, 2, SQRT_A, SQRT_1MA, SCALE)
    torch.testing.assert_close(auto, ops.ensemble_latents(mean, std, keys, 3, 2, SQRT_A, SQRT_1MA, SCALE,
                                                          use_native=True), rtol=0, atol=0)


def test_builds_without_cuda(tmp_path):
    """`pip wheel` with DIFT_FAST_CUDA=AUTO and no nvcc (what a machine without a toolkit gets) builds a CPU-only
    module and records why, with the way to get the CUDA kernels (issue 10: AUTO used to say nothing)."""
    root = Path(__file__).resolve().parents[1]
    no_nvcc = str(tmp_path / "no-such-nvcc")
    env = {**os.environ, "DIFT_FAST_CUDA": "AUTO", "CUDACXX": no_nvcc, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path),
         "-C", f"build-dir={tmp_path / 'build'}", str(root)],
        check=True, env=env, timeout=600,
    )
    (wheel,) = tmp_path.glob("dift_fast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        (so,) = [n for n in z.namelist() if n.startswith("dift_fast/_C.")]
        z.extract(so, tmp_path / "x")
        record = z.read("dift_fast/_build_info.py").decode()
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dift_fast._C', {str(tmp_path / 'x' / so)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "r = m.cuda_build_reason\n"
        "assert m.with_cuda is False and m.build_info()['variant'] == 'cpu', r\n"
        "assert 'DIFT_FAST_CUDA=AUTO found no working CUDA compiler' in r and 'DIFT_FAST_CUDA=ON' in r, r\n"
        "import numpy as np\n"
        "c = np.zeros((1, 4), np.uint32); o = np.zeros((1, 4), np.uint32)\n"
        "m.philox4x32_10_cpu(c, 0, 0, o); assert o[0, 0] == 0x6627E8D5\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert '"variant": "cpu"' in record and "DIFT_FAST_CUDA=AUTO found no working CUDA compiler" in record


# ------------------------------------------------------------------------------------------------- CUDA == CPU
@pytest.mark.gpu
@needs_gpu
def test_cuda_philox_and_noise_equal_cpu(rng):
    counters = torch.from_numpy(rng.integers(0, 2**32, size=(4096, 4), dtype=np.uint32))
    out_cpu, out_gpu = torch.zeros_like(counters), torch.zeros_like(counters, device="cuda")
    C.philox4x32_10_cpu(counters, 3, 4, out_cpu)
    C.philox4x32_10_cuda(counters.cuda(), 3, 4, out_gpu, stream=torch.cuda.current_stream().cuda_stream)
    assert torch.equal(out_gpu.cpu(), out_cpu)
    keys = [1, 2**64 - 3]
    cpu = cpp_noise(keys, 77, 4, 4099, noise.POSTERIOR_STREAM)
    gpu = cpp_noise(keys, 77, 4, 4099, noise.POSTERIOR_STREAM, device="cuda").cpu()
    dist = ulp_distance(gpu.numpy(), cpu.numpy())
    assert dist.max() <= 4 and (dist == 0).mean() >= 0.999  # CUDA's double log/sin/cos: ≤ 2 ulp in double


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_cuda_latents_equal_cpu(out_dtype):
    mean, std, keys = latents_inputs(3, 4, 16, 12)
    args = (keys, 5, 4, SQRT_A, SQRT_1MA, SCALE, out_dtype)
    cpu = ops.ensemble_latents(mean, std, *args, use_native=True)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # launches on the caller's current stream
        gpu = ops.ensemble_latents(mean.cuda(), std.cuda(), *args, use_native=True)
    stream.synchronize()
    # identical unless a normal differs in its last bit between libm and CUDA (rare: see the noise test)
    same = (gpu.cpu() == cpu).float().mean().item()
    assert same >= 0.999
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    twin = ops.ensemble_latents(mean.cuda(), std.cuda(), *args, use_native=False)
    torch.testing.assert_close(gpu, twin, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_reduce_equals_cpu(dtype):
    feats = torch.randn(3 * 4, 70, 9, 13).to(dtype)
    mean_c, norm_c = ops.ensemble_reduce_normalized(feats, 4, use_native=True)
    mean_g, norm_g = ops.ensemble_reduce_normalized(feats.cuda(), 4, use_native=True)
    assert torch.equal(mean_g.cpu(), mean_c) and torch.equal(norm_g.cpu(), norm_c)  # same order, IEEE ops
    # torch on CUDA divides by E as a multiply by 1/E: exact for E = 4, so the twin matches bit for bit here
    torch.testing.assert_close(mean_g, ops.ensemble_reduce(feats.cuda(), 4, use_native=False), rtol=0, atol=0)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["vector", "misaligned", "tail"])
def test_cuda_reduce_vector_and_scalar_paths_equal_cpu(dtype, layout):
    """16-byte loads (P a multiple of the vector, aligned), the scalar fallback for a misaligned base, and a P that
    is no multiple of the vector: all equal the CPU kernel bit for bit; E = 6 covers a member batch + remainder."""
    b, e, c = 2, 6, 40
    h, w = (8, 12) if layout != "tail" else (7, 11)
    n = b * e * c * h * w
    host = torch.randn(n + 1).to(dtype)
    feats = (host[1:] if layout == "misaligned" else host[:n]).reshape(b * e, c, h, w)
    gpu = (torch.empty(n + 1, dtype=dtype, device="cuda")[1:] if layout == "misaligned" else
           torch.empty(n, dtype=dtype, device="cuda")).reshape(b * e, c, h, w)
    gpu.copy_(feats)
    assert (gpu.data_ptr() % 16 == 0) == (layout != "misaligned")
    mean_c, norm_c = ops.ensemble_reduce_normalized(feats, e, use_native=True)
    mean_g, norm_g = ops.ensemble_reduce_normalized(gpu, e, use_native=True)
    assert torch.equal(mean_g.cpu(), mean_c) and torch.equal(norm_g.cpu(), norm_c)
    assert torch.equal(ops.ensemble_reduce(gpu, e, use_native=True).cpu(), mean_c)


@pytest.mark.gpu
@needs_gpu
def test_cuda_tensor_to_the_cpu_entry_raises():
    with pytest.raises(ValueError, match="must be a CPU tensor"):
        C.ensemble_reduce_cpu(torch.randn(2, 3, 2, 2, device="cuda"), torch.empty(1, 3, 2, 2), None, 2)
    with pytest.raises(ValueError, match="normalized must be a CUDA tensor"):
        C.ensemble_reduce_cuda(torch.randn(2, 3, 2, 2, device="cuda"), torch.empty(1, 3, 2, 2, device="cuda"),
                               torch.empty(1, 2, 2, 3), 2)
