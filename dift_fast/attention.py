"""Which attention kernel runs, and where half-precision attention needs diffusers' classic processor.

SD 2.x's UNet asks for its attention scores in float32 (``upcast_attention`` in its config): in fp16, Q·Kᵀ
overflows (65504 is fp16's largest value) and the features become NaN. diffusers' default processor
(``AttnProcessor2_0``) calls torch's ``scaled_dot_product_attention`` (SDPA) and ignores the flag; its classic
processor (``AttnProcessor``) honours it by materialising the scores ``[rows·heads, S, S]`` in float32 (at 768²,
S = 9216: 1.7 GB per UNet row and head group). Whether the flag matters depends on the kernel SDPA picks
(``torch._fused_sdp_choice``, the function SDPA itself calls; torch's ``sdp_utils.cpp`` / ``sdp_utils_cpp.cpp``):

- **Fused kernels** (CUDA: flash attention, memory-efficient attention, cuDNN attention; CPU: the flash kernel):
  the scores live tile by tile in float32 accumulators with an online softmax, never in memory and never rounded
  to fp16. They need no upcast and write no score tensor. On CUDA flash runs fp16/bf16 with head sizes up to 256
  on sm80+ (SD 2.1: 64 everywhere); memory-efficient runs fp32/fp16/bf16 with head sizes a multiple of 8 (fp16)
  or 4 (fp32) on sm50+; on the CPU flash runs fp32, fp64, bf16 and fp16 whenever q, k and v share their head size.
- **The math kernel** runs when none of those can: switched off (``torch.backends.cuda.enable_flash_sdp(False)``
  etc., or inside ``torch.nn.attention.sdpa_kernel([SDPBackend.MATH])``), a head size or GPU they do not take, a
  build without them. It materialises the scores. Since torch 2.5 it upcasts fp16/bf16 inputs to fp32 unless
  ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)`` (a global switch anyone may flip); torch 2.4,
  which dift-fast supports, computes in fp16.

So the classic processor is swapped in only for attention modules that ask for ``upcast_attention``, run in fp16,
and on which SDPA would pick the math kernel: there it costs no more memory than the math kernel and it holds on
every torch version and whatever that switch says. Everywhere else SDPA runs (no score tensor written; expected to be
several times faster than the classic processor on CUDA, not measured: no GPU has run this code). bf16 has float32's exponent range and needs neither. The extractor's
non-finite check stays as the net under all of this.

The choice depends on the device, dtype, head count, head size and the switches, not on the sequence lengths
(beyond being non-zero) for unmasked, non-causal attention without dropout, which is what the networks run; it is
asked once per distinct (heads, head size) with small probe tensors when the backend is built. (One corner: with
flash and memory-efficient attention both switched off, cuDNN attention may accept a probe and refuse a real
length; the math kernel then runs with torch's own fp32 upcast.)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["classic_attention_needed", "configure_attention", "sdpa_kernel_name"]

logger = logging.getLogger(__name__)

_PROBE_QUERY_LEN = 64  # any non-zero length gives the same choice (see the module docstring)
_PROBE_KEY_LEN = 77  # CLIP's context length: the cross-attention's keys
# torch.nn.attention.SDPBackend values (stable since torch 2.0; cuDNN since 2.3, "overrideable" since 2.5)
_KERNEL_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
_choices: dict[tuple[Any, ...], str] = {}


def sdpa_kernel_name(
    device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, chooser: Callable[..., int] | None = None
) -> str:
    """The kernel torch's SDPA picks for unmasked attention of ``heads`` heads of ``head_dim`` on ``device``.

    Returns ``"flash"``, ``"efficient"``, ``"cudnn"``, ``"math"``, ``"overrideable"`` or ``"unknown"`` (this
    torch cannot say: callers treat it as math). ``chooser`` replaces ``torch._fused_sdp_choice`` (tests).
    Answers with torch's own chooser are cached per (device, dtype, heads, head size, SDPA switches).
    """
    device = torch.device(device)
    key = (device, dtype, heads, head_dim, _switches())
    if chooser is None and key in _choices:
        return _choices[key]
    pick = chooser if chooser is not None else getattr(torch, "_fused_sdp_choice", None)
    if pick is None:
        return "unknown"
    query = torch.empty((1, heads, _PROBE_QUERY_LEN, head_dim), dtype=dtype, device=device)
    key_value = torch.empty((1, heads, _PROBE_KEY_LEN, head_dim), dtype=dtype, device=device)
    try:
        name = _KERNEL_NAMES.get(int(pick(query, key_value, key_value)), "unknown")
    except RuntimeError:  # e.g. "No viable backend": SDPA itself would fail or fall back
        name = "unknown"
    if chooser is None:
        _choices[key] = name
    return name


def _switches() -> tuple[bool, ...]:
    """The global SDPA switches the choice depends on (``sdpa_kernel`` contexts set these too)."""
    cuda = torch.backends.cuda
    names = ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled", "cudnn_sdp_enabled")
    return tuple(bool(getattr(cuda, n)()) if hasattr(cuda, n) else True for n in names)


def _is_sdpa_processor(processor: Any) -> bool:
    """diffusers' default processor: the one that calls SDPA and ignores ``upcast_attention``."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    return type(processor) is AttnProcessor2_0


def classic_attention_needed(
    module: nn.Module, device: torch.device, dtype: torch.dtype, chooser: Callable[..., int] | None = None
) -> bool:
    """Whether attention ``module`` must run diffusers' classic processor to keep its fp32 scores.

    True only for fp16, a module that asks for ``upcast_attention`` and runs the SDPA processor, and SDPA picking
    the math kernel (or torch not saying which it picks) for the module's heads and head size on ``device``.
    """
    if dtype != torch.float16 or not getattr(module, "upcast_attention", False):
        return False
    if not _is_sdpa_processor(getattr(module, "processor", None)):
        return False
    heads = int(module.heads)
    head_dim = int(module.inner_dim) // heads
    return sdpa_kernel_name(device, dtype, heads, head_dim, chooser) in ("math", "unknown")


def configure_attention(
    network: nn.Module, device: torch.device, dtype: torch.dtype, chooser: Callable[..., int] | None = None
) -> dict[str, int]:
    """Swap the classic processor in where :func:`classic_attention_needed`; count what runs where.

    Returns ``{"sdpa:<kernel>": n, "classic": m, "other": k}`` over the attention modules of ``network`` (kernel as
    :func:`sdpa_kernel_name` names it; "other": a processor that is neither diffusers' SDPA nor classic one).
    """
    from diffusers.models.attention_processor import AttnProcessor

    classic = AttnProcessor()
    counts: Counter[str] = Counter()
    for module in network.modules():
        if not hasattr(module, "set_processor") or not hasattr(module, "heads"):
            continue
        if classic_attention_needed(module, device, dtype, chooser):
            module.set_processor(classic)
            counts["classic"] += 1
        elif _is_sdpa_processor(getattr(module, "processor", None)):
            head_dim = int(module.inner_dim) // int(module.heads)
            counts["sdpa:" + sdpa_kernel_name(device, dtype, int(module.heads), head_dim, chooser)] += 1
        elif type(getattr(module, "processor", None)) is AttnProcessor:
            counts["classic"] += 1
        else:
            counts["other"] += 1
    if counts.get("classic"):
        logger.info(
            "fp16 attention on %s: %d module(s) run diffusers' classic processor (fp32 scores: SDPA would "
            "use its math kernel there), %s",
            device,
            counts["classic"],
            dict(counts),
        )
    return dict(counts)
