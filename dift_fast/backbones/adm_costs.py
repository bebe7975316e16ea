"""Parameter and FLOP counts of DIFT_adm, measured on meta tensors (no weights, no memory, no compute).

Counted the same way as :mod:`dift_fast.flops` does for SD (torch's ``FlopCounterMode``, a multiply-add counted as 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..flops import count_flops, count_parameters
from .adm import adm_config, build_adm_unet
from .adm_network import TruncatedADM

__all__ = ["AdmCostReport", "measure_adm_costs"]


@dataclass
class AdmCostReport:
    """Parameters and FLOPs of DIFT_adm for one image size and feature block."""

    image_size: tuple[int, int]  # (W, H)
    block: int
    total_parameters: int  # the whole UNet2DModel
    truncated_parameters: int  # what runs up to the block
    flops: int  # per image per ensemble member (no encoder: pixel space)

    def per_image(self, ensemble_size: int) -> int:
        """FLOPs per image for ``ensemble_size`` noise draws (no shared encoder, so just E passes)."""
        return ensemble_size * self.flops


def measure_adm_costs(
    image_size: tuple[int, int] = (512, 512), block: int = 4, config: dict[str, Any] | None = None
) -> AdmCostReport:
    """Build ADM from its config on the meta device and count parameters and FLOPs for one ``(W, H)`` image."""
    w, h = image_size
    config = config or adm_config()
    unet = build_adm_unet(config, device="meta")
    truncated = TruncatedADM(unet, block)
    with torch.device("meta"):
        image = torch.zeros(1, int(config["in_channels"]), h, w)
        flops = count_flops(truncated, image, torch.tensor([1]))
    return AdmCostReport(
        image_size=(w, h),
        block=block,
        total_parameters=count_parameters(unet),
        truncated_parameters=count_parameters(truncated),
        flops=flops,
    )
