"""`TruncatedADM`: diffusers' ``UNet2DModel`` (holding guided-diffusion's ADM) up to DIFT's output block k.

DIFT_adm numbers its feature blocks as guided-diffusion's ``output_blocks`` (0..17 for the 256x256 model): block k
is up level ``k // (L+1)``, resnet ``k % (L+1)`` (with its attention on attention levels), plus the level's
upsampler when ``k % (L+1) == L`` (L = ``layers_per_block`` = 2). The feature is that block's output; nothing after
it is kept or run (no later resnets, attentions, levels, ``conv_norm_out`` or ``conv_out``).

The modules are diffusers' own (``ResnetBlock2D``, ``Attention``, the down and mid blocks), shared with the source
model, composed here in ``UNet2DModel.forward``'s order: time embedding, ``conv_in``, down blocks (collecting skips),
mid block, then the up path resnet by resnet, each consuming the last skip. One forward can return several blocks
(``blocks=(4, 7)``): the pass runs to the deepest one and the shallower ones are taken on the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..unet import requested_blocks

__all__ = ["AdmBlock", "TruncatedADM", "adm_block"]


@dataclass(frozen=True)
class AdmBlock:
    """Where DIFT's output block ``index`` lives in a ``UNet2DModel`` and what it produces."""

    index: int  # k, numbered as guided-diffusion's output_blocks
    level: int  # diffusers up_blocks index
    resnet: int  # resnet (and attention) index inside that up block
    upsample: bool  # the level's upsampler runs as part of this block
    channels: int  # feature channels
    stride: int  # input pixels per feature cell


def adm_block(config: Mapping[str, Any], index: int) -> AdmBlock:
    """Locate DIFT's output block ``index`` in a ``UNet2DModel`` config (``layers_per_block``, ``block_out_channels``).

    Raises:
        ValueError: ``index`` is outside 0..(levels · (layers_per_block + 1) − 1).
    """
    per_level = int(config["layers_per_block"]) + 1
    channels = list(config["block_out_channels"])
    n_levels = len(channels)
    count = n_levels * per_level
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"ADM feature block must be an integer in 0..{count - 1} (output_blocks), got {index!r}")
    level, resnet = divmod(index, per_level)
    upsample = resnet == per_level - 1 and level < n_levels - 1
    stride = 2 ** (n_levels - 1 - level - int(upsample))
    return AdmBlock(index, level, resnet, upsample, channels[n_levels - 1 - level], stride)


class _UpLevel(nn.Module):
    """The part of one diffusers up block that runs: its first resnets (+ attentions) and maybe its upsampler."""

    def __init__(self, block: nn.Module, num_resnets: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(list(block.resnets)[:num_resnets])
        attentions = getattr(block, "attentions", None)
        self.attentions = nn.ModuleList(list(attentions)[:num_resnets]) if attentions is not None else None
        upsamplers = getattr(block, "upsamplers", None)
        self.upsampler = upsamplers[0] if upsample and upsamplers is not None else None
        if upsample and self.upsampler is None:
            raise ValueError("this up block has no upsampler")
        if self.upsampler is not None and getattr(block, "upsample_type", "resnet") != "resnet":
            raise NotImplementedError("TruncatedADM expects resnet upsamplers (upsample_type='resnet')")


class TruncatedADM(nn.Module):
    """``UNet2DModel`` truncated after DIFT's output block ``block`` (guided-diffusion numbering).

    Args:
        unet: a diffusers ``UNet2DModel`` with resnet up/down sampling (e.g. built from the ``adm256`` config).
        block: DIFT's feature block k (0..17 for ADM-256).
    """

    def __init__(self, unet: nn.Module, block: int) -> None:
        super().__init__()
        config = unet.config
        if getattr(unet, "class_embedding", None) is not None:
            raise NotImplementedError("TruncatedADM supports unconditional UNet2DModels (no class embedding)")
        if config.get("time_embedding_type", "positional") != "positional" or config.get("center_input_sample"):
            raise NotImplementedError("TruncatedADM supports positional time embeddings without input centring")
        self.config = config
        self.block = adm_block(config, block)
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.conv_in = unet.conv_in
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        per_level = int(config["layers_per_block"]) + 1
        levels = []
        for i in range(self.block.level + 1):
            last = i == self.block.level
            levels.append(
                _UpLevel(
                    unet.up_blocks[i],
                    num_resnets=self.block.resnet + 1 if last else per_level,
                    upsample=self.block.upsample if last else True,
                )
            )
        self.up_levels = nn.ModuleList(levels)
        self.per_level = per_level
        self.num_skips_used = self.block.index + 1
        # Every downsampler halves the size; sizes must survive all of them exactly (guided-diffusion's rule).
        self.size_multiple = 2 ** (len(config["block_out_channels"]) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def feature_block(self) -> int:
        """The deepest block kept: what ``forward`` returns without ``blocks``."""
        return self.block.index

    @property
    def in_channels(self) -> int:
        return int(self.conv_in.in_channels)

    @property
    def out_channels(self) -> int:
        """Channels of the feature."""
        return self.block.channels

    def block_channels(self, k: int) -> int:
        """Output channels of block ``k``."""
        return adm_block(self.config, k).channels

    @property
    def num_downsamplers(self) -> int:
        return sum(1 for b in self.down_blocks if getattr(b, "downsamplers", None) is not None)

    def num_upsamplers(self, k: int | None = None) -> int:
        """Upsamplers that run up to block ``k`` (default: the feature block)."""
        info = adm_block(self.config, self.block.index if k is None else k)
        return info.level + int(info.upsample)

    @property
    def trace_side(self) -> int:
        """An input side for tracing a general-size graph (sizes must be multiples of ``size_multiple``)."""
        return 2 * self.size_multiple

    @contextlib.contextmanager
    def general_size_trace(self) -> Iterator[None]:
        """Nothing to switch: every size that runs takes the same (exact) path."""
        yield

    def forward(
        self,
        sample: torch.Tensor,  # [N, 3, H, W], the noised image x_t
        timestep: torch.Tensor | int,  # raw integer t: scalar or [N]
        encoder_hidden_states: torch.Tensor | None = None,  # unconditional: must be None
        blocks: Sequence[int] | None = None,
    ) -> torch.Tensor | dict[int, torch.Tensor]:  # [N, C, H / stride, W / stride], or {k: ...} with ``blocks``
        """Output block ``block``'s features; with ``blocks``, a dict of every block asked for (one pass)."""
        if encoder_hidden_states is not None:
            raise ValueError("ADM is unconditional: it takes no encoder_hidden_states (text embeddings)")
        wanted = requested_blocks(blocks, self.block.index) if blocks is not None else (self.block.index,)
        h, w = sample.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"ADM input size {w}x{h} (WxH) is not a multiple of {m}: its {m.bit_length() - 1} downsamplers halve "
                f"it exactly; resize the image to a multiple of {m} (e.g. {max(m, w // m * m)}x{max(m, h // m * m)})"
            )
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.int64, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))

        # Down path. Only the last `num_skips_used` skips are ever consumed; earlier ones are not kept.
        hidden = self.conv_in(sample)
        total_skips = 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in self.down_blocks)
        first_kept = total_skips - self.num_skips_used
        skips: list[torch.Tensor] = [hidden] if first_kept == 0 else []
        produced = 1
        for block in self.down_blocks:
            hidden, res = block(hidden_states=hidden, temb=emb)
            skips += [r for n, r in enumerate(res, start=produced) if n >= first_kept]
            produced += len(res)
        hidden = self.mid_block(hidden, emb)

        # Up path through the deepest block asked for; block k = resnet j of level i, k = i·(L+1) + j.
        outputs: dict[int, torch.Tensor] = {}
        for i, level in enumerate(self.up_levels):
            for j, resnet in enumerate(level.resnets):
                k = i * self.per_level + j
                if k > wanted[-1]:
                    break
                hidden = resnet(torch.cat([hidden, skips.pop()], dim=1), emb)
                if level.attentions is not None:
                    hidden = level.attentions[j](hidden)
                if j == len(level.resnets) - 1 and level.upsampler is not None:
                    hidden = level.upsampler(hidden, emb)
                if k in wanted:
                    outputs[k] = hidden
        return outputs if blocks is not None else outputs[self.block.index]
