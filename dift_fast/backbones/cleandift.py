"""CleanDIFT (Stracke et al., CVPR 2025) as a backbone: SD 2.1 with a fine-tuned UNet and no diffusion noise.

The UNet's weights are replaced by ``cleandift_sd21_unet.safetensors`` from the hub repository ``CompVis/cleandift``
(MIT licence; :mod:`.unet_weights` reads it), or by the file ``DiftConfig.unet_weights`` names. Features (spec §6):
the clean latent -- the VAE posterior sample with contract noise (stream 0), times the VAE scaling factor -- goes
straight into the UNet at t = 261, ensemble of 1; no diffusion noise is drawn (stream 1 unused). CleanDIFT's
``us6`` feature is DIFT's up block 1. On ``tiny-random`` the tiny CleanDIFT-shaped weights replace the real file
(which does not fit the tiny UNet).
"""

from __future__ import annotations

from ..config import TINY_MODEL
from ..schedule import CleanSchedule
from ..tiny import TINY_CLEANDIFT_WEIGHTS
from .catalog import CLEANDIFT_UNET_WEIGHTS
from .sd import SdBackbone
from .unet_weights import CLEANDIFT_KEY_PREFIXES, CLEANDIFT_UNET_FILE, load_unet_weights, select_unet_keys

__all__ = [
    "CLEANDIFT_KEY_PREFIXES",
    "CLEANDIFT_REPO",
    "CLEANDIFT_UNET_FILE",
    "CLEANDIFT_UNET_WEIGHTS",
    "CleanDiftBackbone",
    "load_unet_weights",
    "select_unet_keys",
]

CLEANDIFT_REPO = CLEANDIFT_UNET_WEIGHTS.rpartition("/")[0]


class CleanDiftBackbone(SdBackbone):
    """SD 2.1 with CleanDIFT's UNet: the SD backbone's encoder, text and network, and :class:`CleanSchedule`."""

    name = "cleandift"

    def _make_schedule(self) -> CleanSchedule:
        return CleanSchedule()

    @property
    def unet_weights(self) -> str:
        spec = self.config.unet_weights or CLEANDIFT_UNET_WEIGHTS
        if spec == CLEANDIFT_UNET_WEIGHTS and self.model_id == TINY_MODEL:
            return TINY_CLEANDIFT_WEIGHTS  # the real file does not fit the tiny UNet
        return spec
