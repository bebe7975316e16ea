"""Parameter and FLOP counts of the networks DIFT runs, measured on meta tensors (no weights, no compute).

Each backbone reports its costs as one :class:`CostReport` (``Backbone.costs``); :func:`measure_costs` measures SD's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .unet import TruncatedUNet, VaeEncoder

__all__ = ["CostReport", "count_flops", "count_parameters", "measure_costs"]


@dataclass
class CostReport:
    """Parameters and FLOPs (a multiply-add counts 2) of one backbone for one image size and feature block.

    The encoder (SD's VAE) runs once per image; the truncated network once per ensemble member. A backbone
    without an encoder (ADM) has ``encoder_parameters`` None and ``encoder_flops`` 0.
    """

    image_size: tuple[int, int]  # (W, H)
    block: int  # the feature block (up_ft_index)
    network_parameters: int  # of the truncated network (what runs up to the block)
    network_total_parameters: int | None  # of the whole network the checkpoint holds
    encoder_parameters: int | None  # None: no encoder
    text_encoder_parameters: int | None  # None: unknown or no text
    encoder_flops: int  # per image (0 without an encoder)
    network_flops: int  # per ensemble member

    def per_image(self, ensemble_size: int) -> int:
        """dift-fast's FLOPs per image: the encoder once + E truncated network passes."""
        return self.encoder_flops + ensemble_size * self.network_flops

    def reference_per_image(self, ensemble_size: int) -> int:
        """The reference's FLOPs per image: the encoder and the network on every member."""
        return ensemble_size * (self.encoder_flops + self.network_flops)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (meta tensors count too)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Any, *args: Any) -> int:
    """FLOPs (a multiply-add counted as 2) of one call ``fn(*args)``, by torch's FlopCounterMode, without grad.

    Runs on meta tensors as well, so a real-size network can be counted without memory or weights.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def measure_costs(
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    image_size: tuple[int, int],
    up_ft_index: int,
    text_encoder_parameters: int | None = None,
) -> CostReport:
    """SD: build the UNet and VAE from their configs on the meta device and count parameters and FLOPs for one image."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    w, h = image_size
    with torch.device("meta"):
        full = UNet2DConditionModel.from_config(dict(unet_config))
        unet = TruncatedUNet(full, up_ft_index)
        vae = VaeEncoder(AutoencoderKL.from_config(dict(vae_config)))
        f = vae.downsample_factor
        image = torch.zeros(1, 3, h, w)
        latent = torch.zeros(1, vae.latent_channels, h // f, w // f)
        context = torch.zeros(1, 77, unet.config.cross_attention_dim)
        vae_flops = count_flops(vae.moments, image)
        unet_flops = count_flops(unet, latent, torch.tensor([1]), context)
    return CostReport(
        image_size=(w, h),
        block=up_ft_index,
        network_parameters=count_parameters(unet),
        network_total_parameters=count_parameters(full),
        encoder_parameters=count_parameters(vae),
        text_encoder_parameters=text_encoder_parameters,
        encoder_flops=vae_flops,
        network_flops=unet_flops,
    )
