"""A straightforward guided-diffusion (ADM) UNet, written in the tests from the model's semantics, not from its code.

It works directly on a state dict with guided-diffusion's own key names (``input_blocks.N.M...``,
``in_layers/emb_layers/out_layers/skip_connection``, ``norm/qkv/proj_out``), so the diffusers conversion under test
never touches it:

- time embedding: [cos(t·f), sin(t·f)] with f_i = 10000^(−i/half), then linear, SiLU, linear;
- ResBlock (scale-shift norm): h = conv(up/down(SiLU(GN(x)))); h = GN(h)·(1 + scale) + shift with (scale, shift)
  from linear(SiLU(emb)); h = conv(SiLU(h)); out = skip(up/down(x)) + h. up = nearest ×2, down = 2×2 average pool;
- AttentionBlock (legacy order): qkv = conv1d(GN(x)), viewed per head as [3·d] channels (q, k, v of that head),
  q and k each scaled by d^(−1/4), softmax over keys, out = x + proj_out(attention);
- GroupNorm: 32 groups, eps 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class GDLayout:
    """A guided-diffusion UNet's blocks: each a list of (kind, key prefix) with kind conv/res/res_down/res_up/attn."""

    model_channels: int
    head_channels: int
    input_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    middle: list[tuple[str, str]] = field(default_factory=list)
    output_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def gd_layout(
    model_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attention_ds: set[int],
    head_channels: int,
    in_channels: int = 3,
    out_channels: int = 6,
) -> GDLayout:
    """Keys, shapes and block structure of a guided-diffusion UNet with resblock up/down and scale-shift norm."""
    lay = GDLayout(model_channels, head_channels)
    shapes = lay.shapes
    emb = 4 * model_channels

    def linear(name, i, o):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (o, i), (o,)

    def conv(name, i, o, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (o, i, k, k), (o,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def res(name, i, o):
        norm(f"{name}.in_layers.0", i)
        conv(f"{name}.in_layers.2", i, o, 3)
        linear(f"{name}.emb_layers.1", emb, 2 * o)
        norm(f"{name}.out_layers.0", o)
        conv(f"{name}.out_layers.3", o, o, 3)
        if i != o:
            conv(f"{name}.skip_connection", i, o, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        shapes[f"{name}.qkv.weight"], shapes[f"{name}.qkv.bias"] = (3 * c, c, 1), (3 * c,)
        shapes[f"{name}.proj_out.weight"], shapes[f"{name}.proj_out.bias"] = (c, c, 1), (c,)

    linear("time_embed.0", model_channels, emb)
    linear("time_embed.2", emb, emb)
    ch = model_channels * channel_mult[0]
    conv("input_blocks.0.0", in_channels, ch, 3)
    lay.input_blocks.append([("conv", "input_blocks.0.0")])
    skip_channels = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            b = len(lay.input_blocks)
            res(f"input_blocks.{b}.0", ch, mult * model_channels)
            ch = mult * model_channels
            layers = [("res", f"input_blocks.{b}.0")]
            if ds in attention_ds:
                attn(f"input_blocks.{b}.1", ch)
                layers.append(("attn", f"input_blocks.{b}.1"))
            lay.input_blocks.append(layers)
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            b = len(lay.input_blocks)
            res(f"input_blocks.{b}.0", ch, ch)
            lay.input_blocks.append([("res_down", f"input_blocks.{b}.0")])
            skip_channels.append(ch)
            ds *= 2
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    lay.middle = [("res", "middle_block.0"), ("attn", "middle_block.1"), ("res", "middle_block.2")]
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            b = len(lay.output_blocks)
            res(f"output_blocks.{b}.0", ch + skip_channels.pop(), model_channels * mult)
            ch = model_channels * mult
            layers = [("res", f"output_blocks.{b}.0")]
            if ds in attention_ds:
                attn(f"output_blocks.{b}.1", ch)
                layers.append(("attn", f"output_blocks.{b}.1"))
            if level and i == num_res_blocks:
                res(f"output_blocks.{b}.{len(layers)}", ch, ch)
                layers.append(("res_up", f"output_blocks.{b}.{len(layers)}"))
                ds //= 2
            lay.output_blocks.append(layers)
    norm("out.0", ch)
    conv("out.2", ch, out_channels, 3)
    return lay


def random_state(layout: GDLayout, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of moderate scale for every key (norm scales near 1, fan-in scaled weights, small biases)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.shapes.items():
        x = torch.randn(shape, generator=gen)
        if key.endswith(".bias"):
            state[key] = 0.1 * x
        elif len(shape) == 1:  # a GroupNorm scale
            state[key] = 1.0 + 0.1 * x
        else:
            state[key] = x / math.sqrt(math.prod(shape[1:]))
    return state


def _gn(x, p, key):
    return F.group_norm(x.float(), 32, p[f"{key}.weight"], p[f"{key}.bias"], eps=1e-5).to(x.dtype)


def _res(p, key, x, emb, mode):
    h = F.silu(_gn(x, p, f"{key}.in_layers.0"))
    if mode == "res_up":
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    elif mode == "res_down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = F.conv2d(h, p[f"{key}.in_layers.2.weight"], p[f"{key}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), p[f"{key}.emb_layers.1.weight"], p[f"{key}.emb_layers.1.bias"])[:, :, None, None]
    scale, shift = e.chunk(2, dim=1)
    h = _gn(h, p, f"{key}.out_layers.0") * (1 + scale) + shift
    h = F.conv2d(F.silu(h), p[f"{key}.out_layers.3.weight"], p[f"{key}.out_layers.3.bias"], padding=1)
    if f"{key}.skip_connection.weight" in p:
        x = F.conv2d(x, p[f"{key}.skip_connection.weight"], p[f"{key}.skip_connection.bias"])
    return x + h


def _attn(p, key, x, head_channels):
    b, c, hh, ww = x.shape
    xf = x.reshape(b, c, hh * ww)
    qkv = torch.einsum("oc,bct->bot", p[f"{key}.qkv.weight"][:, :, 0], _gn(xf, p, f"{key}.norm"))
    qkv = qkv + p[f"{key}.qkv.bias"][None, :, None]
    heads = c // head_channels
    per_head = qkv.reshape(b * heads, 3 * head_channels, hh * ww)  # legacy order: heads outermost
    q, k, v = (
        per_head[:, :head_channels],
        per_head[:, head_channels : 2 * head_channels],
        per_head[:, 2 * head_channels :],
    )
    s = head_channels**-0.25
    weights = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1).to(q.dtype)
    a = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, hh * ww)
    out = (
        torch.einsum("oc,bct->bot", p[f"{key}.proj_out.weight"][:, :, 0], a) + p[f"{key}.proj_out.bias"][None, :, None]
    )
    return (xf + out).reshape(b, c, hh, ww)


def _apply(p, layers, h, emb, head_channels):
    for kind, key in layers:
        if kind == "conv":
            h = F.conv2d(h, p[f"{key}.weight"], p[f"{key}.bias"], padding=1)
        elif kind == "attn":
            h = _attn(p, key, h, head_channels)
        else:
            h = _res(p, key, h, emb, kind)
    return h


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def output_block_features(layout: GDLayout, p: dict[str, torch.Tensor], x: torch.Tensor, t: int) -> list[torch.Tensor]:
    """The output of every ``output_blocks[k]`` for the input ``x`` [N, 3, H, W] at the integer timestep ``t``."""
    tt = torch.full((x.shape[0],), t, dtype=torch.int64)
    emb = timestep_embedding(tt, layout.model_channels)
    emb = F.linear(
        F.silu(F.linear(emb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
        p["time_embed.2.weight"],
        p["time_embed.2.bias"],
    )
    skips, h = [], x
    for layers in layout.input_blocks:
        h = _apply(p, layers, h, emb, layout.head_channels)
        skips.append(h)
    h = _apply(p, layout.middle, h, emb, layout.head_channels)
    outs = []
    for layers in layout.output_blocks:
        h = _apply(p, layers, torch.cat([h, skips.pop()], dim=1), emb, layout.head_channels)
        outs.append(h)
    return outs
