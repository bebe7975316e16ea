"""Precision rewriting for export: fp16/bf16 copies of the networks with the parts SD 2.1 needs in fp32.

For fp16/bf16 the networks are copied and cast, except where SD 2.1 loses its statistics in half precision
(spec §2): every GroupNorm runs in fp32 (input cast up, fp32 affine parameters, output cast back). LayerNorm needs
nothing: ONNX LayerNormalization keeps its statistics in fp32 (``stash_type`` 1). Attention is exported in the form
TensorRT fuses (:mod:`.attention`): its scores stay in fp32 registers inside the fused kernel, and an fp32 Softmax
island between half-precision MatMuls would prevent that fusion.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EXPORT_DTYPES", "Dtype", "Fp32GroupNorm", "dtype_name", "low_precision_copy"]

EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Dtype = Literal["fp32", "fp16", "bf16"]
_DTYPE_NAMES = {v: k for k, v in EXPORT_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str | None:
    """"fp32", "fp16" or "bf16" for an exportable torch dtype, else None."""
    return _DTYPE_NAMES.get(dtype)


class Fp32GroupNorm(nn.Module):
    """GroupNorm whose statistics and affine transform run in fp32 whatever the input dtype."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float().clone(), requires_grad=False) if norm.affine else None
        self.bias = nn.Parameter(norm.bias.detach().float().clone(), requires_grad=False) if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def low_precision_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` in ``dtype`` with every GroupNorm kept in fp32."""
    out = copy.deepcopy(module).to(dtype)
    for child in list(out.modules()):
        for attr, grandchild in list(child.named_children()):
            if isinstance(grandchild, nn.GroupNorm):
                setattr(child, attr, Fp32GroupNorm(grandchild))
    return out
