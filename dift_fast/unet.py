"""`TruncatedUNet`: the SD UNet up to (and including) one up block, composed from diffusers' own blocks.

It mirrors the numbered stages of ``UNet2DConditionModel.forward`` (1. time, 2. conv_in, 3. down, 4. mid,
5. up) but stops after up block k, so the later up blocks, ``conv_norm_out`` and ``conv_out`` are neither kept nor
run. The blocks themselves are diffusers' modules, shared (not copied) with the source UNet.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TruncatedUNet", "VaeEncoder", "posterior"]


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
    def out_channels(self) -> int:
        """Channels of the feature (the up block's output channels)."""
        block = self.up_blocks[-1]
        return block.resnets[-1].conv2.out_channels

    def forward(
        self,
        sample: torch.Tensor,  # [N, 4, h, w]
        timestep: torch.Tensor | int,  # scalar or [N]
        encoder_hidden_states: torch.Tensor,  # [N, 77, D]
    ) -> torch.Tensor:  # [N, C, h', w']
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

        # 5. up, through block k only
        for block in self.up_blocks:
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
        return sample


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
