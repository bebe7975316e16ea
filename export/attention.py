"""Attention in the form TensorRT fuses into one flash/MHA kernel, installed while a network is traced to ONNX.

Every diffusers ``Attention`` of a traced network computes, per head of size ``d``::

    scores = (Q · scale) @ Kᵀ      # MatMul; the scale multiplies Q before it (a Mul by the constant d**-0.5)
    probs  = Softmax(scores)       # on the last axis, in the graph's dtype
    out    = probs @ V             # MatMul

with nothing between the two MatMuls but the Softmax. This is the pattern TensorRT's attention fusion matches
(its fused-attention guide: Q or K multiplied by the attention scale before the first batched MatMul; the two
MatMuls' inputs in FP16 or BF16; head size 16..256 and a multiple of 8). The fused kernel keeps the scores in
on-chip fp32 and never writes the [rows, heads, S, S] score tensor to memory.

It replaces two forms that block the fusion or bloat the graph:

* diffusers' classic processor (``baddbmm`` with ``beta=0``): the scale is applied *after* Q·Kᵀ and an empty tensor
  times zero is added to the scores, then (with ``upcast_attention``) a Cast to fp32 sits before the Softmax;
* an fp32 Softmax island (Cast → Softmax → Cast) between half-precision MatMuls, which TensorRT does not fuse.

Precision: the Softmax runs in the graph's dtype. In a fused TensorRT kernel (fp16/bf16 engines) the scores and
the softmax are computed in fp32 registers; an unfused runtime (onnxruntime) runs the Softmax node in the graph's
dtype (its CPU provider computes fp16 Softmax in fp32). bf16 has fp32's range, so its scores cannot overflow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["ATTENTION_FORM", "FusableAttnProcessor", "fusable_attention"]

# Recorded in the export spec (so in the export key and the manifest): graphs traced before this form have none.
ATTENTION_FORM = "q-scaled-matmul-softmax-matmul"


class FusableAttnProcessor:
    """A diffusers attention processor: scale on Q, MatMul, Softmax, MatMul (see the module docstring).

    Same math as diffusers' ``AttnProcessor2_0`` (no mask, no dropout), with ``attn.scale`` as the scale.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("the export attention processor has no attention mask (DIFT's UNet passes none)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        # [B, S, heads*d] -> [B, heads, S, d]
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scores = torch.matmul(query * attn.scale, key.transpose(-1, -2))  # [B, heads, S_q, S_kv]
        hidden_states = torch.matmul(scores.softmax(dim=-1), value)  # [B, heads, S_q, d]
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def fusable_attention(module: nn.Module) -> Iterator[nn.Module]:
    """Run every diffusers ``Attention`` inside ``module`` with :class:`FusableAttnProcessor`; restored on exit.

    Modules that are not diffusers attention (e.g. another backbone's own attention) are left as they are.
    """
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:  # no diffusers: no diffusers attention to replace
        yield module
        return
    saved = [(m, m.processor) for m in module.modules() if isinstance(m, Attention)]
    processor = FusableAttnProcessor()
    try:
        for m, _ in saved:
            m.processor = processor
        yield module
    finally:
        for m, old in saved:
            m.processor = old
