"""Convert an OpenAI guided-diffusion (ADM) UNet state dict into diffusers' ``UNet2DModel`` layout (spec §6).

The mapping is derived from the ``UNet2DModel`` config (``block_out_channels``, ``layers_per_block``, block types,
``attention_head_dim``), so it also covers tiny test models of the same shape family. With ``L`` resnets per level:

- ``time_embed.0/2`` -> ``time_embedding.linear_1/2``; ``input_blocks.0.0`` -> ``conv_in``; ``out.0/2`` ->
  ``conv_norm_out`` / ``conv_out``.
- down level i, resnet j -> ``input_blocks.{1+(L+1)i+j}.0`` (its attention ``.1``); level i's downsampler (a resnet
  with ``down=True``) -> ``input_blocks.{(L+1)(i+1)}.0``.
- ``middle_block.0/1/2`` -> ``mid_block.resnets.0`` / ``mid_block.attentions.0`` / ``mid_block.resnets.1``.
- up level i, resnet j (0..L) -> ``output_blocks.{(L+1)i+j}.0`` (attention ``.1``); its upsampler (a resnet with
  ``up=True``) -> ``output_blocks.{(L+1)i+L}.2`` on attention levels, ``.1`` on the others.
- ResBlock ``in_layers.0 / in_layers.2 / emb_layers.1 / out_layers.0 / out_layers.3 / skip_connection`` ->
  ``norm1 / conv1 / time_emb_proj / norm2 / conv2 / conv_shortcut``.
- AttentionBlock ``norm / qkv / proj_out`` -> ``group_norm / to_q, to_k, to_v / to_out.0``; the 1-D convolutions
  lose their kernel dimension. The fused qkv (``[3C, C, 1]``, bias ``[3C]``) is in guided-diffusion's legacy order,
  grouped per head: channel ``h·3d + s·d + c`` is part s (q, k, v) of head h, channel c (d = head dim). It is split
  by viewing it as ``[H, 3, d, C]`` and taking ``[:, s]`` -- not by cutting it into three equal chunks.

Every checkpoint key must be used exactly once, every model key filled, and every shape must match; otherwise a
:class:`~dift_fast.backbones.weights.WeightsError` names the offending keys and the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .weights import WeightsError, check_state_dict

__all__ = ["ConversionRule", "adm_conversion_rules", "convert_adm_state_dict", "to_guided_diffusion_state_dict"]

_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


@dataclass(frozen=True)
class ConversionRule:
    """Target keys computed from source keys by ``kind``: "copy", "squeeze" (drop a trailing size-1 dim) or "qkv"."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    kind: str


def _level_types(config: Mapping[str, Any]) -> tuple[list[bool], list[bool]]:
    """Whether each down level / up level has attention, from the block type names."""
    down = [t.startswith("Attn") for t in config["down_block_types"]]
    up = [t.startswith("Attn") for t in config["up_block_types"]]
    return down, up


def adm_conversion_rules(config: Mapping[str, Any], target_keys: Mapping[str, Any]) -> list[ConversionRule]:
    """The rules mapping every guided-diffusion key to ``UNet2DModel`` keys for this config.

    Args:
        config: the ``UNet2DModel`` config (resnet up/down sampling, scale-shift norm, ``Attn*`` blocks).
        target_keys: the model's state dict keys (values unused); decides which optional parameters exist
            (``conv_shortcut`` only where a resnet changes the channel count).
    """
    for name, want in (("downsample_type", "resnet"), ("upsample_type", "resnet")):
        if config.get(name) != want:
            raise ValueError(
                f"ADM conversion needs a UNet2DModel config with {name}={want!r}, got {config.get(name)!r}"
            )
    if config.get("resnet_time_scale_shift") != "scale_shift":
        raise ValueError("ADM conversion needs resnet_time_scale_shift='scale_shift' (guided-diffusion's FiLM norm)")
    down_attn, up_attn = _level_types(config)
    n_levels = len(config["block_out_channels"])
    per_level = int(config["layers_per_block"])
    rules: list[ConversionRule] = []

    def param(src: str, dst: str, kind: str = "copy") -> None:
        for p in ("weight", "bias"):
            if f"{dst}.{p}" in target_keys:
                rules.append(ConversionRule((f"{src}.{p}",), (f"{dst}.{p}",), kind))

    def resnet(src: str, dst: str) -> None:
        for part, name in _RESNET_PARTS.items():
            param(f"{src}.{part}", f"{dst}.{name}")

    def attention(src: str, dst: str) -> None:
        param(f"{src}.norm", f"{dst}.group_norm")
        for p in ("weight", "bias"):
            rules.append(ConversionRule((f"{src}.qkv.{p}",), tuple(f"{dst}.to_{s}.{p}" for s in "qkv"), "qkv"))
        param(f"{src}.proj_out", f"{dst}.to_out.0", "squeeze")

    param("time_embed.0", "time_embedding.linear_1")
    param("time_embed.2", "time_embedding.linear_2")
    param("input_blocks.0.0", "conv_in")
    for i in range(n_levels):
        for j in range(per_level):
            block = 1 + (per_level + 1) * i + j
            resnet(f"input_blocks.{block}.0", f"down_blocks.{i}.resnets.{j}")
            if down_attn[i]:
                attention(f"input_blocks.{block}.1", f"down_blocks.{i}.attentions.{j}")
        if i < n_levels - 1:
            resnet(f"input_blocks.{(per_level + 1) * (i + 1)}.0", f"down_blocks.{i}.downsamplers.0")
    resnet("middle_block.0", "mid_block.resnets.0")
    attention("middle_block.1", "mid_block.attentions.0")
    resnet("middle_block.2", "mid_block.resnets.1")
    for i in range(n_levels):
        for j in range(per_level + 1):
            block = (per_level + 1) * i + j
            resnet(f"output_blocks.{block}.0", f"up_blocks.{i}.resnets.{j}")
            if up_attn[i]:
                attention(f"output_blocks.{block}.1", f"up_blocks.{i}.attentions.{j}")
        if i < n_levels - 1:
            last = (per_level + 1) * i + per_level
            resnet(f"output_blocks.{last}.{2 if up_attn[i] else 1}", f"up_blocks.{i}.upsamplers.0")
    param("out.0", "conv_norm_out")
    param("out.2", "conv_out")
    return rules


def _source_shape(rule: ConversionRule, target_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The checkpoint shape a rule needs, from the model's shapes."""
    first = tuple(target_shapes[rule.targets[0]])
    if rule.kind == "copy":
        return first
    if rule.kind == "squeeze":
        return (*first, 1) if len(first) == 2 else first
    # qkv: weight [C, C] -> [3C, C, 1]; bias [C] -> [3C]
    return (3 * first[0], first[1], 1) if len(first) == 2 else (3 * first[0],)


def _split_qkv(fused: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Legacy per-head fused qkv ``[3C, C, 1]`` (or bias ``[3C]``) -> q, k, v ``[C, C]`` (or ``[C]``)."""
    channels = fused.shape[0] // 3
    heads = channels // head_dim
    rest = fused.shape[1:2]  # (C,) for a weight, () for a bias
    grouped = fused.reshape(heads, 3, head_dim, *rest)
    return tuple(grouped[:, s].reshape(channels, *rest).contiguous() for s in range(3))  # type: ignore[return-value]


def convert_adm_state_dict(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    target_shapes: Mapping[str, tuple[int, ...]],
    source: str | os.PathLike = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename and reshape a guided-diffusion state dict into ``UNet2DModel`` keys.

    Works on meta tensors too (shapes only, no memory), which is how the full-size mapping is tested.

    Args:
        state: guided-diffusion's ``{key: tensor}`` (e.g. from ``256x256_diffusion_uncond.pt``).
        config: the ``UNet2DModel`` config.
        target_shapes: ``{key: shape}`` of the model's state dict.
        source: the checkpoint, named in errors.

    Returns:
        ``{diffusers key: tensor}`` with exactly the model's keys and shapes.

    Raises:
        WeightsError: keys missing, unexpected or mis-shaped (each named), or the config's head size does not
            divide the attention width.
    """
    head_dim = config.get("attention_head_dim")
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"ADM conversion needs an integer attention_head_dim (channels per head), got {head_dim!r}")
    rules = adm_conversion_rules(config, target_shapes)
    expected = {src: _source_shape(rule, target_shapes) for rule in rules for src in rule.sources}
    hint = ""
    if "label_emb.weight" in state:
        hint = (
            "This looks like a class-conditional guided-diffusion model (it has label_emb); DIFT_adm uses the "
            "unconditional 256x256_diffusion_uncond.pt."
        )
    check_state_dict({k: tuple(v.shape) for k, v in state.items()}, expected, source, "the ADM UNet", hint)
    for rule in rules:
        if rule.kind == "qkv" and (target_shapes[rule.targets[0]][0] % head_dim):
            raise WeightsError(
                f"{source}: attention width {target_shapes[rule.targets[0]][0]} is not a multiple of the head size "
                f"{head_dim} ({rule.sources[0]})"
            )
    transforms: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = {
        "copy": lambda t: (t,),
        "squeeze": lambda t: (t.reshape(t.shape[:-1]) if t.ndim == 3 else t,),
        "qkv": lambda t: _split_qkv(t if t.ndim == 1 else t.reshape(t.shape[:-1]), head_dim),
    }
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        for key, tensor in zip(rule.targets, transforms[rule.kind](state[rule.sources[0]]), strict=True):
            if key in out:  # a rule table bug, never the user's file
                raise RuntimeError(f"ADM conversion fills {key} twice")
            out[key] = tensor
    check_state_dict(
        {k: tuple(v.shape) for k, v in out.items()}, target_shapes, source, "the ADM UNet (after conversion)"
    )
    return out


def _fuse_qkv(parts: tuple[torch.Tensor, ...], head_dim: int) -> torch.Tensor:
    """Inverse of :func:`_split_qkv`: q, k, v ``[C, C]`` (or ``[C]``) -> legacy fused ``[3C, C, 1]`` (or ``[3C]``)."""
    channels = parts[0].shape[0]
    rest = parts[0].shape[1:]
    grouped = torch.stack([p.reshape(channels // head_dim, head_dim, *rest) for p in parts], dim=1)
    fused = grouped.reshape(3 * channels, *rest)
    return fused[..., None] if rest else fused


def to_guided_diffusion_state_dict(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The inverse conversion: ``UNet2DModel`` weights -> a guided-diffusion state dict with its own key names.

    Writes checkpoints shaped like ``256x256_diffusion_uncond.pt`` (dift-fast's tiny ADM test model);
    ``convert_adm_state_dict`` of the result gives ``state`` back exactly.
    """
    head_dim = int(config["attention_head_dim"])
    out: dict[str, torch.Tensor] = {}
    for rule in adm_conversion_rules(config, state):
        parts = tuple(state[t] for t in rule.targets)
        if rule.kind == "qkv":
            tensor = _fuse_qkv(parts, head_dim)
        elif rule.kind == "squeeze" and parts[0].ndim == 2:
            tensor = parts[0][..., None]
        else:
            tensor = parts[0]
        out[rule.sources[0]] = tensor.contiguous()
    return out
