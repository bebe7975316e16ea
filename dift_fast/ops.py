"""Public entry points of the ensemble ops: the native kernel when it is built, its pure-torch twin otherwise.

Both paths give identical results (tests check it); ``use_native=False`` forces the twin, ``use_native=True``
the kernel (raising :class:`~dift_fast._native.NativeUnavailableError` with the reason when it cannot run), and
``None`` picks the kernel when it can run on the tensors' device. On a CUDA device that falls back to the twin,
one warning per device names the reason (the twin draws the noise on the CPU: correct, but slow there).
:func:`kernel_status` says what is built and why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any, cast

import torch

from . import _native, _torch_impl
from ._native import NativeUnavailableError
from .noise import DIFFUSION_STREAM, POSTERIOR_STREAM
from .transfer import to_device

__all__ = [
    "NativeUnavailableError",
    "ensemble_latents",
    "ensemble_reduce",
    "ensemble_reduce_normalized",
    "kernel_status",
]

logger = logging.getLogger(__name__)

_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK64 = (1 << 64) - 1
_warned_cuda_fallback: set[int] = set()


def _warn_cuda_fallback(index: int, reason: str) -> None:
    """Once per CUDA device: the kernels cannot run there, so the twins do (same results, slower)."""
    if index in _warned_cuda_fallback:
        return
    _warned_cuda_fallback.add(index)
    logger.warning(
        "dift-fast: the CUDA ensemble kernels cannot run on cuda:%d, so the pure-torch twins run instead (identical "
        "results; the noise is drawn on the CPU and copied, which is slow). Reason: %s. `dift-fast info` shows the "
        "build.",
        index,
        reason,
    )


def _native_for(device: torch.device, use_native: bool | None) -> ModuleType | None:
    """The extension when its kernels should run on ``device``; None for the twin."""
    if use_native is False:
        return None
    if device.type == "cpu":
        reason = _native.unavailable_reason()
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        reason = _native.cuda_unusable_reason(index)
    else:
        reason = f"no native kernels for device type {device.type!r}"
    if reason is None:
        return _native.load()
    if use_native:
        raise NativeUnavailableError(reason)
    if device.type == "cuda":
        _warn_cuda_fallback(index, reason)
    return None


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _check_float_tensor(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype} with shape {list(x.shape)}")


def _check_ensemble_size(ensemble_size: int) -> None:
    if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
        raise ValueError(f"ensemble_size must be an int >= 1, got {ensemble_size!r}")


def _native_input(x: torch.Tensor) -> torch.Tensor:
    """Detached, contiguous, in a dtype the kernels read (others are rounded to float32 as the twin does)."""
    x = x.detach()
    return (x if x.dtype in _NATIVE_DTYPES else x.float()).contiguous()


def ensemble_latents(
    mean: torch.Tensor,  # [B, C, h, w]
    std: torch.Tensor | None,  # [B, C, h, w]; None without posterior noise
    keys: Sequence[int],
    seed: int,
    ensemble_size: int,
    sqrt_alpha: float,
    sqrt_one_minus_alpha: float,
    scaling_factor: float,
    out_dtype: torch.dtype = torch.float32,
    use_native: bool | None = None,
    *,
    posterior_noise: bool = True,
    diffusion_noise: bool = True,
) -> torch.Tensor:  # [B*E, C, h, w]
    """Noised diffusion-space samples x_t of every ensemble member, drawn per the noise contract (spec §3).

    Member e of image b is row ``b*E + e``: ``z0 = (mean + std·ε₁)·scaling_factor``,
    ``x_t = sqrt_alpha·z0 + sqrt_one_minus_alpha·ε₂`` in float32, cast once to ``out_dtype``. The noise counters
    run over the flat index of the image's ``[C, h, w]`` sample, stream 0 for ε₁ and stream 1 for ε₂.

    A backbone draws only the streams it has: ``posterior_noise=False`` (no encoder: ``mean`` is the image itself,
    ``std`` unused) gives ``z0 = mean·scaling_factor``; ``diffusion_noise=False`` (a schedule that adds no noise)
    gives ``x_t = z0``. With both streams (SD) the fused kernel runs; otherwise the kernel draws the one stream
    and the combination runs in torch, each float32 operation rounded once as in the kernel.

    Args:
        mean, std: posterior mean and standard deviation, ``[B, C, h, w]`` on one device.
        keys: one 64-bit image key per image (taken modulo 2**64).
        seed: run seed (modulo 2**64).
        ensemble_size: E >= 1.
        out_dtype: float32, float16 or bfloat16.
        use_native: True/False forces the kernel/the twin; None picks the kernel when it can run.
        posterior_noise, diffusion_noise: which noise streams exist (both, for SD).
    """
    _check_float_tensor(mean, "mean")
    if posterior_noise:
        _check_float_tensor(std, "std")
        if mean.shape != std.shape or mean.ndim != 4:
            raise ValueError(f"mean and std must both be [B, C, h, w], got {list(mean.shape)} and {list(std.shape)}")
        if mean.device != std.device:
            raise ValueError(f"mean and std must be on one device, got {mean.device} and {std.device}")
    elif mean.ndim != 4:
        raise ValueError(f"mean must be [B, C, h, w], got {list(mean.shape)}")
    if len(keys) != mean.shape[0]:
        raise ValueError(f"got {len(keys)} image keys for a batch of {mean.shape[0]}")
    _check_ensemble_size(ensemble_size)
    if out_dtype not in _NATIVE_DTYPES:
        raise TypeError(f"out_dtype must be torch.float32, float16 or bfloat16, got {out_dtype}")
    native = _native_for(mean.device, use_native)
    if native is None:
        return _torch_impl.ensemble_latents(
            mean, std, keys, seed, ensemble_size, sqrt_alpha, sqrt_one_minus_alpha, scaling_factor, out_dtype,
            posterior_noise, diffusion_noise,
        )
    keys_t = _keys_tensor(keys, mean.device)
    if not (posterior_noise and diffusion_noise):
        eps = [
            _native_noise(native, keys_t, seed, ensemble_size, tuple(mean.shape[1:]), stream) if wanted else None
            for wanted, stream in ((posterior_noise, POSTERIOR_STREAM), (diffusion_noise, DIFFUSION_STREAM))
        ]
        x_t = _torch_impl.combine_latents(mean.float(), std.float() if posterior_noise else None, *eps,
                                          sqrt_alpha, sqrt_one_minus_alpha, scaling_factor, ensemble_size)
        return x_t.to(out_dtype)
    mean_in, std_in = _native_input(mean), _native_input(std)
    if mean_in.dtype != std_in.dtype:  # mixed dtypes: float32 holds both exactly
        mean_in, std_in = mean_in.float(), std_in.float()
    b, c, h, w = mean.shape
    out = torch.empty((b * ensemble_size, c, h, w), dtype=out_dtype, device=mean.device)
    args = (
        mean_in,
        std_in,
        keys_t,
        out,
        int(seed) & _MASK64,
        ensemble_size,
        float(sqrt_alpha),
        float(sqrt_one_minus_alpha),
        float(scaling_factor),
    )
    if mean.device.type == "cuda":
        native.ensemble_latents_cuda(*args, stream=_stream(mean.device))
    else:
        native.ensemble_latents_cpu(*args, num_threads=torch.get_num_threads())
    return out


def _keys_tensor(keys: Sequence[int], device: torch.device) -> torch.Tensor:
    """Image keys as int64 (the kernels read them as uint64), on ``device`` without a host wait (pinned copy)."""
    signed = [(k & _MASK64) - (1 << 64) if (k & _MASK64) >> 63 else k & _MASK64 for k in map(int, keys)]
    return to_device(torch.tensor(signed, dtype=torch.int64), device)


def _native_noise(native: ModuleType, keys_t: torch.Tensor, seed: int, ensemble_size: int, shape: tuple[int, ...],
                  stream_id: int) -> torch.Tensor:  # [B, E, *shape] float32
    """One noise stream of the contract from the kernel (the twin is :func:`_torch_impl.ensemble_noise`)."""
    out = torch.empty((keys_t.shape[0], ensemble_size, math.prod(shape)), dtype=torch.float32, device=keys_t.device)
    if keys_t.device.type == "cuda":
        native.contract_noise_cuda(keys_t, out, int(seed) & _MASK64, stream_id, stream=_stream(keys_t.device))
    else:
        native.contract_noise_cpu(keys_t, out, int(seed) & _MASK64, stream_id, num_threads=torch.get_num_threads())
    return out.reshape(keys_t.shape[0], ensemble_size, *shape)


def ensemble_reduce(
    feats: torch.Tensor,  # [B*E, C, h, w]
    ensemble_size: int,
    use_native: bool | None = None,
) -> torch.Tensor:  # [B, C, h, w] float32
    """Mean over the ensemble in float32.

    Rows ``b*E .. b*E + E-1`` of ``feats`` (float32, float16 or bfloat16) are the members of image b; they are
    added in order in float32 and divided by E.

    Args:
        feats: ``[B*E, C, h, w]`` member features.
        ensemble_size: E >= 1.
        use_native: True/False forces the kernel/the twin; None picks the kernel when it can run.
    """
    return _reduce(feats, ensemble_size, False, use_native)[0]


def ensemble_reduce_normalized(
    feats: torch.Tensor,  # [B*E, C, h, w]
    ensemble_size: int,
    use_native: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # [B, C, h, w], [B, h, w, C] float32
    """:func:`ensemble_reduce` plus the mean divided by its L2 norm over C, channels-last (what matching reads).

    The norm is clamped at 1e-12 (zero vectors stay zero). Returns ``(mean [B, C, h, w], normalized [B, h, w, C])``.
    """
    mean, normalized = _reduce(feats, ensemble_size, True, use_native)
    return mean, cast(torch.Tensor, normalized)


def _reduce(
    feats: torch.Tensor, ensemble_size: int, normalized: bool, use_native: bool | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_float_tensor(feats, "feats")
    if feats.ndim != 4:
        raise ValueError(f"feats must be [B*E, C, h, w], got {list(feats.shape)}")
    _check_ensemble_size(ensemble_size)
    if feats.shape[0] % ensemble_size:
        raise ValueError(f"feats has {feats.shape[0]} samples, not a multiple of ensemble_size={ensemble_size}")
    native = _native_for(feats.device, use_native)
    if native is None:
        if normalized:
            return _torch_impl.ensemble_reduce_normalized(feats, ensemble_size)
        return _torch_impl.ensemble_reduce(feats, ensemble_size), None
    n, c, h, w = feats.shape
    nhwc = None if normalized else _channels_last_view(feats)
    if nhwc is not None:
        # The mean is per element over the E members: the kernel averages the NHWC buffer as it lies (a
        # [N, h, w, C] tensor to it) with the same additions in the same order, so no copy of the E-times larger
        # input; only the mean is transposed back to NCHW.
        mean_nhwc = torch.empty((n // ensemble_size, h, w, c), dtype=torch.float32, device=feats.device)
        _run_reduce(native, nhwc, mean_nhwc, None, ensemble_size)
        return mean_nhwc.permute(0, 3, 1, 2).contiguous(), None
    feats_in = _native_input(feats)
    mean = torch.empty((n // ensemble_size, c, h, w), dtype=torch.float32, device=feats.device)
    normed = (
        torch.empty((n // ensemble_size, h, w, c), dtype=torch.float32, device=feats.device) if normalized else None
    )
    _run_reduce(native, feats_in, mean, normed, ensemble_size)
    return mean, normed


def _channels_last_view(feats: torch.Tensor) -> torch.Tensor | None:
    """``feats`` [N, C, h, w] stored channels-last, as the contiguous [N, h, w, C] tensor it is; else None.

    (A tensor contiguous in both layouts, e.g. C = 1 or h = w = 1, is taken as NCHW.)
    """
    if feats.is_contiguous() or not feats.is_contiguous(memory_format=torch.channels_last):
        return None
    nhwc = feats.detach().permute(0, 2, 3, 1)
    if nhwc.dtype not in _NATIVE_DTYPES:
        nhwc = nhwc.float()
    return nhwc if nhwc.is_contiguous() else None


def _run_reduce(native: ModuleType, feats: torch.Tensor, mean: torch.Tensor, normed: torch.Tensor | None,
                ensemble_size: int) -> None:
    if feats.device.type == "cuda":
        native.ensemble_reduce_cuda(feats, mean, normed, ensemble_size, stream=_stream(feats.device))
    else:
        native.ensemble_reduce_cpu(feats, mean, normed, ensemble_size, num_threads=torch.get_num_threads())


def kernel_status() -> dict[str, Any]:
    """What native kernels are built and usable here, and why; `dift-fast info` prints it.

    Returns:
        ``{"variant": "cuda"|"cpu"|"none"|"unknown", "reason": str, "cpu": {"built", "usable", "reason"},
        "cuda": {"built", "usable", "reason"}, "openmp": bool, "build": {compiler, flags, CUDA archs, ...}}``.
        ``variant``/``reason`` are what the install built and why (the build record); a device's ``reason`` is
        None when its kernels run there, else why the pure-torch twin runs instead.
    """
    record = _native.build_record()
    reason = _native.unavailable_reason()
    if reason is not None:
        missing = {"built": False, "usable": False, "reason": reason}
        return {
            "variant": record["variant"],
            "reason": record["reason"],
            "cpu": missing,
            "cuda": dict(missing),
            "openmp": False,
            "build": record,
        }
    module = _native.load()
    build = dict(module.build_info())
    cuda_reason = _native.cuda_unusable_reason(torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return {
        # the module itself is the truth about what it holds; the record may be missing (not a pip install)
        "variant": build.get("variant", record["variant"]),
        "reason": build.get("cuda_build_reason", record["reason"]),
        "cpu": {"built": True, "usable": True, "reason": None},
        "cuda": {"built": bool(module.with_cuda), "usable": cuda_reason is None, "reason": cuda_reason},
        "openmp": bool(build.get("openmp", False)),
        "build": build,
    }
