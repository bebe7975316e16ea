"""`TruncatedUNet`: the SD UNet up to (and including) one up block, composed from diffusers' own blocks.

It mirrors the numbered stages of ``UNet2DConditionModel.forward`` (1. time, 2. conv_in, 3. down, 4. mid,
5. up) but stops after up block k, so the later up blocks, ``conv_norm_out`` and ``conv_out`` are neither kept nor
run. The blocks themselves are diffusers' modules, shared (not copied) with the source UNet. One forward can return
several blocks (``blocks=(0, 1)``): the pass runs to the deepest one and the shallower ones are taken on the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["TruncatedUNet", "VaeEncoder", "posterior", "requested_blocks"]


def requested_blocks(blocks: Sequence[int], deepest: int) -> tuple[int, ...]:
    """``blocks`` as a sorted tuple without repeats, each checked to be a kept block (0..``deepest``)."""
    wanted = tuple(sorted(set(blocks)))
    bad = [k for k in wanted if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= deepest]
    if not wanted or bad:
        raise ValueError(f"blocks {list(blocks)} must be a non-empty list of blocks 0..{deepest} (this network is "
                         f"truncated after block {deepest})")
    return wanted


class TruncatedUNet(nn.Module):
    """UNet2DConditionModel truncated after ``up_blocks[up_ft_index]`` (after its upsampler).

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x layout: no class or added embeddings).
        up_ft_index: index k of the up block whose output is the feature.
    """

    def __init__(self, unet: nn.Module, up_ft_index: int) -> None:
        super().__init__()
        config = unet.config
        if not 0 <= up_ft_index < len(unet.up_blocks):
            raise ValueError(
                f"up_ft_index={up_ft_index} is out of range: this UNet has {len(unet.up_blocks)} up blocks"
            )
        unsupported = [
            name
            for name in ("class_embedding", "add_embedding", "encoder_hid_proj", "time_embed_act")
            if getattr(unet, name, None) is not None
        ]
        if unsupported:
            raise NotImplementedError(f"TruncatedUNet supports SD 1.x/2.x UNets; this one has {unsupported}")
        self.config = config
        self.up_ft_index = up_ft_index
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.conv_in = unet.conv_in
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.up_blocks = nn.ModuleList(list(unet.up_blocks)[: up_ft_index + 1])
        # The full UNet's rule (diffusers forward): upsample to the skip size when the latent is not a multiple
        # of 2**(number of upsamplers of the *whole* UNet).
        self.overall_up_factor = 2 ** getattr(unet, "num_upsamplers", len(unet.up_blocks) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def feature_block(self) -> int:
        """The deepest block kept: what ``forward`` returns without ``blocks``."""
        return self.up_ft_index

    @property
    def in_channels(self) -> int:
        return int(self.conv_in.in_channels)

    @property
    def out_channels(self) -> int:
        """Channels of the feature (the up block's output channels)."""
        return self.block_channels(self.up_ft_index)

    def block_channels(self, k: int) -> int:
        """Output channels of up block ``k`` (a kept one)."""
        return int(self.up_blocks[k].resnets[-1].conv2.out_channels)

    @property
    def num_downsamplers(self) -> int:
        """Down blocks that halve the latent (rounding up)."""
        return sum(1 for b in self.down_blocks if getattr(b, "downsamplers", None))

    def num_upsamplers(self, k: int | None = None) -> int:
        """Up blocks 0..k (default: the feature block) that double the size back."""
        k = self.up_ft_index if k is None else k
        return sum(1 for b in list(self.up_blocks)[: k + 1] if getattr(b, "upsamplers", None))

    # Any latent size runs (each upsampler resizes to its skip's size), so the network adds no size rule.
    size_multiple = 1

    @property
    def trace_side(self) -> int:
        """A latent side for tracing the general-size graph: not a multiple of the total upsampling."""
        return 2 * self.overall_up_factor + 2

    @contextlib.contextmanager
    def general_size_trace(self) -> Iterator[None]:
        """Trace the branch that resizes each upsampler to its skip's size (a Python bool in the forward).

        For a symbolic spatial size the trace must keep that branch: it is exact for any latent size and, for sizes
        divisible by the UNet's total upsampling, gives the same nearest-neighbour result as the scale-2 branch.
        """
        saved = self.overall_up_factor
        self.overall_up_factor = 2**62 + 1  # odd and larger than any size: every size "is not a multiple"
        try:
            yield
        finally:
            self.overall_up_factor = saved

    def forward(
        self,
        sample: torch.Tensor,  # [N, 4, h, w]
        timestep: torch.Tensor | int,  # scalar or [N]
        encoder_hidden_states: torch.Tensor,  # [N, 77, D]
        blocks: Sequence[int] | None = None,
    ) -> torch.Tensor | dict[int, torch.Tensor]:  # [N, C, h', w'], or {k: [N, C_k, h_k, w_k]} with ``blocks``
        """Up block ``up_ft_index``'s output; with ``blocks``, a dict of the output of every block asked for.

        The pass stops after the deepest block asked for; every block is its output after its upsampler.
        """
        wanted = requested_blocks(blocks, self.up_ft_index) if blocks is not None else (self.up_ft_index,)
        forward_upsample_size = any(s % self.overall_up_factor for s in sample.shape[-2:])

        # 1. time
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.int64, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)

        # 2. pre-process
        sample = self.conv_in(sample)

        # 3. down
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res

        # 4. mid
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                sample = self.mid_block(sample, emb)

        # 5. up, through the deepest block asked for
        outputs: dict[int, torch.Tensor] = {}
        for k, block in enumerate(list(self.up_blocks)[: wanted[-1] + 1]):
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and skips else None
            if getattr(block, "has_cross_attention", False):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=encoder_hidden_states,
                    upsample_size=upsample_size,
                )
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
            if k in wanted:
                outputs[k] = sample
        return outputs if blocks is not None else outputs[self.up_ft_index]


class VaeEncoder(nn.Module):
    """The VAE's encoder and ``quant_conv`` only: image ``[N,3,H,W]`` in [-1, 1] -> posterior (mean, std).

    The decoder is never kept. ``logvar`` is clamped to [-30, 20] as diffusers' ``DiagonalGaussianDistribution``.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = getattr(vae, "quant_conv", None)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", None) or 0.18215)
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def moments(self, images: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] -> [N, 2*4, h, w]
        """Raw moments (mean and logvar concatenated on channels), as the exported graph returns them."""
        h = self.encoder(images)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return posterior(self.moments(images))


def posterior(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [N, 2*c, h, w] -> 2 x [N, c, h, w]
    """The VAE posterior (mean, std) from its raw moments, in the moments' dtype.

    ``logvar`` is clamped to [-30, 20] as diffusers' ``DiagonalGaussianDistribution`` does. Every backend maps its
    encoder output through this one function.
    """
    mean, logvar = torch.chunk(moments, 2, dim=1)
    return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
