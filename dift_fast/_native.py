"""Lazy access to the native kernels (``dift_fast._C``).

Importing this module loads nothing. The extension is imported on first use; a missing or broken build becomes
one cached :class:`NativeUnavailableError` whose message says why, and whether CUDA kernels can run on a device is
probed once per device (a trivial kernel launch) and cached.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

__all__ = ["NativeUnavailableError", "available", "cuda_unusable_reason", "load", "unavailable_reason"]


class NativeUnavailableError(RuntimeError):
    """The native kernels cannot run here (not built, or no usable CUDA device); the message says why."""


_module: ModuleType | None = None
_error: str | None = None
_cuda_reasons: dict[int, str | None] = {}


def load() -> ModuleType:
    """The extension module; raises the (cached) :class:`NativeUnavailableError` when it cannot be imported."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise NativeUnavailableError(_error)
    try:
        _module = importlib.import_module("dift_fast._C")
    except ImportError as exc:
        _error = (
            f"the native kernels (dift_fast._C) are not available: {exc}. Reinstall dift-fast from source "
            "(`pip install .`, which builds them with CMake) or pass use_native=False"
        )
        raise NativeUnavailableError(_error) from exc
    return _module


def available() -> bool:
    """Whether the extension imports (its CPU kernels are then usable)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why the extension cannot be imported, or None when it can."""
    try:
        load()
    except NativeUnavailableError as exc:
        return str(exc)
    return None


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


def cuda_unusable_reason(device_index: int) -> str | None:
    """Why the CUDA kernels cannot run on ``cuda:device_index``, or None when they can (cached per device)."""
    if device_index in _cuda_reasons:
        return _cuda_reasons[device_index]
    reason = unavailable_reason()
    if reason is None:
        module = load()
        probe = module.cuda_probe(device_index) if module.with_cuda else {}
        if not module.with_cuda:
            reason = f"dift_fast._C has no CUDA kernels ({module.cuda_build_reason})"
        elif not probe["ok"] and probe["driver_version"] == 0:
            reason = f"no NVIDIA driver or GPU here ({probe['error']})"
        elif not probe["ok"]:
            reason = (
                f"CUDA kernels failed on cuda:{device_index}: {probe['error']} (the driver supports CUDA "
                f"{_version(probe['driver_version'])}, the kernels were built for CUDA "
                f"{_version(probe['runtime_version'])})"
            )
        elif not torch.cuda.is_available():
            reason = f"torch {torch.__version__} cannot make CUDA tensors (built for CUDA {torch.version.cuda})"
    _cuda_reasons[device_index] = reason
    return reason
