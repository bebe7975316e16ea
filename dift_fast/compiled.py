"""``torch.compile`` for the torch backend's networks, with CUDA graphs where the shapes are static.

``DiftConfig.compile`` compiles the truncated network and the encoder with TorchInductor (on the CPU and on CUDA).
On CUDA with a fixed image size it uses ``mode="reduce-overhead"``: Inductor records each compiled graph as a
CUDA graph per input shape and replays it, so a network call costs a handful of host operations instead of
hundreds of kernel launches (what pays at small micro-batches, where launch overhead is a visible share of the
time). With ``image_size=None`` every image size would record a graph and keep its memory, so there (and on the
CPU, where there are no CUDA graphs) the default mode runs.

Every shape compiles once (Inductor recompiles for a new shape, then with a dynamic batch size after the second
one); the first call of each therefore takes long (tens of seconds for the tiny model on a CPU, minutes for SD 2.1
on a GPU). Numerics: Inductor fuses elementwise chains and may reorder reductions; in fp32 the features stay within
float rounding of eager (``tests/test_compile.py``: <= 1e-5 relative); in bf16/fp16 a fused chain keeps its
intermediates in fp32 where eager rounds after each op, a difference at the compute dtype's rounding.

CUDA graph outputs live in memory the next replay overwrites, so :class:`CompiledCall` starts a new graph step
before each call (``torch.compiler.cudagraph_mark_step_begin``) and returns copies of the outputs: a caller may
keep a result while it runs the network again (several timesteps, or blocks, per micro-batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

__all__ = ["CompiledCall", "compile_mode"]


def compile_mode(device: torch.device, static_shapes: bool) -> str | None:
    """``"reduce-overhead"`` (CUDA graphs) on CUDA with static shapes; else None (Inductor's default mode)."""
    return "reduce-overhead" if torch.device(device).type == "cuda" and static_shapes else None


class CompiledCall:
    """``module`` compiled with ``torch.compile`` (lazily: on the first call), called like the module.

    Args:
        module: the network or encoder (already on its device, in its dtype and memory format).
        mode: the ``torch.compile`` mode (:func:`compile_mode`).
        compiler: replaces ``torch.compile`` (tests).
    """

    def __init__(self, module: nn.Module, mode: str | None, compiler: Callable[..., Any] | None = None) -> None:
        self.module = module
        self.mode = mode
        self.cuda_graphs = mode == "reduce-overhead"
        self._fn = (compiler or torch.compile)(module, mode=mode)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier outputs may be overwritten from now
        out = self._fn(*args, **kwargs)
        if self.cuda_graphs:  # copies the caller owns, not the graph's output buffers
            out = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, out)
        return out
