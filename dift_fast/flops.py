"""Parameter and FLOP counts of the networks DIFT runs, measured on meta tensors (no weights, no compute)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .unet import TruncatedUNet, VaeEncoder

__all__ = ["CostReport", "count_parameters", "measure_component_costs", "measure_costs"]


@dataclass
class CostReport:
    """Parameters and FLOPs (a multiply-add counts 2) per image and per ensemble member."""

    image_size: tuple[int, int]  # (W, H)
    up_ft_index: int
    unet_parameters: int  # of the truncated UNet
    vae_encoder_parameters: int
    text_encoder_parameters: int | None
    vae_flops: int  # per image (the VAE runs once per image)
    unet_flops: int  # per ensemble member
    text_encoder_flops: int | None = None  # one prompt (77 tokens); dift-fast encodes each prompt once

    def per_image(self, ensemble_size: int) -> int:
        """dift-fast's FLOPs per image: VAE once + E truncated UNet passes."""
        return self.vae_flops + ensemble_size * self.unet_flops

    def reference_per_image(self, ensemble_size: int) -> int:
        """The reference's FLOPs per image: VAE and UNet on every ensemble member."""
        return ensemble_size * (self.vae_flops + self.unet_flops)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def _flops(fn: Any, *args: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def measure_costs(
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    image_size: tuple[int, int],
    up_ft_index: int,
    text_encoder: nn.Module | None = None,
) -> CostReport:
    """Build the networks from their configs on the meta device and count parameters and FLOPs for one image.

    With ``text_encoder`` (a transformers text model; its weights are not touched), also its parameters and the
    FLOPs of encoding one prompt.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    w, h = image_size
    with torch.device("meta"):
        unet = TruncatedUNet(UNet2DConditionModel.from_config(dict(unet_config)), up_ft_index)
        vae = VaeEncoder(AutoencoderKL.from_config(dict(vae_config)))
        f = vae.downsample_factor
        image = torch.zeros(1, 3, h, w)
        latent = torch.zeros(1, vae.latent_channels, h // f, w // f)
        context = torch.zeros(1, 77, unet.config.cross_attention_dim)
        vae_flops = _flops(vae.moments, image)
        unet_flops = _flops(unet, latent, torch.tensor([1]), context)
        text_flops = None
        if text_encoder is not None:
            text_copy = type(text_encoder)(text_encoder.config)
            text_flops = _flops(text_copy, torch.zeros(1, 77, dtype=torch.int64))
    return CostReport(
        image_size=(w, h),
        up_ft_index=up_ft_index,
        unet_parameters=count_parameters(unet),
        vae_encoder_parameters=count_parameters(vae),
        text_encoder_parameters=count_parameters(text_encoder) if text_encoder is not None else None,
        vae_flops=vae_flops,
        unet_flops=unet_flops,
        text_encoder_flops=text_flops,
    )


def measure_component_costs(components: Any, image_size: tuple[int, int]) -> CostReport:
    """:func:`measure_costs` for loaded :class:`~dift_fast.loading.DiftComponents` (from their configs).

    The VAE's config is read from ``components.folder`` (``vae/config.json``), as the loaded encoder keeps none.
    """
    path = components.folder / "vae" / "config.json"
    try:
        vae_config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot count FLOPs: cannot read {path}: {err}") from None
    unet = components.unet
    return measure_costs(dict(unet.config), vae_config, image_size, unet.up_ft_index, components.text_encoder)
