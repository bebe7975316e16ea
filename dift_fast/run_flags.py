"""cuDNN autotuning and TF32, switched for the network calls only and put back after each.

Two process-wide torch switches decide speed and numerics of the torch backend on CUDA:

- ``cudnn.benchmark``: cuDNN times its convolution algorithms on the first call of each input shape and keeps the
  fastest. It pays when shapes repeat (a fixed image size: every micro-batch has the same shape) and costs a
  search per new shape otherwise. The algorithm changes the summation order only (float rounding); but it is
  picked by timing, so two processes may pick differently, which is why it is off when the user asked for
  deterministic algorithms (``torch.use_deterministic_algorithms`` or ``cudnn.deterministic``).
- TF32: Ampere and later GPUs can run float32 convolutions and matmuls with a 10-bit mantissa. torch enables it by
  default for cuDNN convolutions (``cudnn.allow_tf32 = True``) and not for matmuls. fp32 with TF32 is not fp32
  (~1e-3 relative error in the features, part of the feature identity), so dift-fast runs fp32 without it unless
  ``DiftConfig.tf32`` asks.

Nothing is set at import or left behind: :func:`network_flags` sets both around a call and restores what was
there, so other code in the process keeps its own settings. The switches are process-wide state: a thread that
runs other CUDA work at the same moment sees them too (dift-fast runs its networks from one thread).

torch has two interfaces for TF32: the legacy booleans (``torch.backends.cuda.matmul.allow_tf32``,
``torch.backends.cudnn.allow_tf32``) and, since 2.9, per-operation precisions (``torch.backends.cuda.matmul.
fp32_precision``, ``torch.backends.cudnn.conv.fp32_precision``...). torch raises when the legacy getters are read
after the two were set inconsistently. So this module sets TF32 through the legacy setters (which keep both views
consistent) when the legacy getters answer, through the per-operation precisions when they do not (the process
uses the new interface), and on exit restores the legacy flags and then the exact precision strings it found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["deterministic_requested", "network_flags", "tf32_state"]

# the per-operation precisions (torch >= 2.9) that TF32 touches, as (module path, attribute)
_PRECISION_ATTRS = (
    ("cuda.matmul", "fp32_precision"),
    ("cudnn.conv", "fp32_precision"),
    ("cudnn.rnn", "fp32_precision"),
)


def deterministic_requested() -> bool:
    """Whether the user asked torch for deterministic algorithms (then no timing-based algorithm choice)."""
    return bool(torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic)


def _backend_module(path: str) -> Any:
    module: Any = torch.backends
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _precisions() -> dict[str, str]:
    """The per-operation fp32 precisions, where this torch has them."""
    out = {}
    for path, attr in _PRECISION_ATTRS:
        module = _backend_module(path)
        if module is not None:
            try:
                out[path] = str(getattr(module, attr))
            except (AttributeError, RuntimeError):
                continue
    return out


def tf32_state() -> dict[str, Any]:
    """What TF32 is now: ``{"matmul": bool | None, "cudnn": bool | None, "precisions": {...}}`` (None: unreadable)."""
    state: dict[str, Any] = {"precisions": _precisions()}
    for name, read in (
        ("matmul", lambda: torch.backends.cuda.matmul.allow_tf32),
        ("cudnn", lambda: torch.backends.cudnn.allow_tf32),
    ):
        try:
            state[name] = bool(read())
        except RuntimeError:  # the two interfaces were set inconsistently by someone else
            state[name] = None
    return state


def _legacy_tf32() -> tuple[bool, bool] | None:
    """(matmul, cudnn) TF32 booleans, or None when the two interfaces were set inconsistently (torch raises)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return None


def _set_tf32(enabled: bool, legacy: bool, precisions: dict[str, str]) -> None:
    if legacy:  # the legacy setters keep the per-operation precisions consistent with them
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
    else:  # someone uses the per-operation interface: stay with it
        for path in precisions:
            _backend_module(path).fp32_precision = "tf32" if enabled else "ieee"


@contextlib.contextmanager
def network_flags(*, tf32: bool, benchmark: bool) -> Iterator[None]:
    """Run the body with TF32 ``tf32`` (matmuls and cuDNN) and ``cudnn.benchmark`` ``benchmark``; restore after.

    Only the switches are touched (they are read by CUDA kernels; on the CPU they change nothing). On exit the
    legacy booleans and the per-operation precision strings are what they were on entry, even after an exception.
    (Not ``torch.backends.cudnn.flags()``: it resets every flag it is not given to its own defaults, ``enabled=False``
    among them, and reads the legacy TF32 getter, which raises once the per-operation interface is in use.)
    """
    saved_benchmark = bool(torch.backends.cudnn.benchmark)
    precisions = _precisions()
    legacy = _legacy_tf32()
    try:
        torch.backends.cudnn.benchmark = benchmark
        _set_tf32(tf32, legacy is not None, precisions)
        yield
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
        if legacy is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
        for path, value in precisions.items():  # after the legacy setters, which rewrite them
            _backend_module(path).fp32_precision = value
