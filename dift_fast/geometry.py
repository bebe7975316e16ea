"""The sizes of the networks DIFT runs: enough to size every tensor (latents, features) without the weights.

Every backend reports one :class:`NetworkGeometry`: the torch backend from its modules, the ONNX backends from the
export manifest, so an accelerated backend never needs the torch networks just to know a feature's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NetworkGeometry"]


@dataclass(frozen=True)
class NetworkGeometry:
    """VAE and truncated-UNet sizes that decide latent and feature shapes."""

    latent_channels: int  # channels of the VAE latent (4 for SD)
    downsample_factor: int  # image pixels per latent cell (8 for SD)
    scaling_factor: float  # the VAE latent's scale (0.18215 for SD 2.1)
    feature_channels: int  # C of the feature: output channels of up block k
    num_downsamplers: int  # UNet down blocks that halve the latent (rounding up)
    num_upsamplers: int  # up blocks 0..k that double it back (to the next skip's size)
    static_image_size: tuple[int, int] | None = None  # (W, H) a static export was made for; None: any size

    @classmethod
    def of(cls, unet: Any, vae: Any) -> NetworkGeometry:
        """The geometry of a :class:`~dift_fast.unet.TruncatedUNet` and a :class:`~dift_fast.unet.VaeEncoder`."""
        return cls(
            latent_channels=int(vae.latent_channels),
            downsample_factor=int(vae.downsample_factor),
            scaling_factor=float(vae.scaling_factor),
            feature_channels=int(unet.out_channels),
            num_downsamplers=sum(1 for b in unet.down_blocks if getattr(b, "downsamplers", None)),
            num_upsamplers=sum(1 for b in unet.up_blocks if getattr(b, "upsamplers", None)),
        )

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the latent of an image of ``height`` x ``width`` pixels.

        Raises:
            ValueError: the networks are a static export made for another image size (the message names it).
        """
        if self.static_image_size is not None and (width, height) != tuple(self.static_image_size):
            w, h = self.static_image_size
            raise ValueError(
                f"this export is static: its graphs take {w}x{h} images only, not {width}x{height}; extract at "
                f"--image-size {w}x{h}, or export again with that size or with dynamic sizes (--dynamic-size)"
            )
        return height // self.downsample_factor, width // self.downsample_factor

    def feature_hw(self, h: int, w: int) -> tuple[int, int]:
        """(h', w') of the feature for a latent of ``h`` x ``w``.

        Each downsampler halves, rounding up (a stride-2 conv with padding 1); each upsampler of blocks 0..k
        returns to the next skip's size.
        """
        sizes = [(h, w)]
        for _ in range(self.num_downsamplers):
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        return sizes[len(sizes) - 1 - self.num_upsamplers]

    def feature_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h', w') of the feature of an image of ``image_size`` (W, H) pixels."""
        w, h = image_size
        return (self.feature_channels, *self.feature_hw(*self.latent_hw(h, w)))
