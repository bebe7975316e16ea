"""The sizes of the networks DIFT runs: enough to size every tensor (latents, features) without the weights.

Every backend reports one :class:`NetworkGeometry`: the torch backend from its modules, the ONNX backends from the
export manifest, so an accelerated backend never needs the torch networks just to know a feature's shape. It holds
for every backbone: with an encoder (SD's VAE) the diffusion space is its latent; without one (ADM) it is the
image itself (``downsample_factor`` 1, ``scaling_factor`` 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["NetworkGeometry"]


@dataclass(frozen=True)
class NetworkGeometry:
    """Encoder and truncated-network sizes that decide diffusion-space and feature shapes."""

    latent_channels: int  # channels of the diffusion-space sample (4 for SD's latent, 3 for ADM's pixels)
    downsample_factor: int  # image pixels per diffusion-space cell (8 for SD, 1 without an encoder)
    scaling_factor: float  # the latent's scale (0.18215 for SD 2.1, 1 without an encoder)
    feature_channels: int  # C of the feature: output channels of block k
    num_downsamplers: int  # network stages that halve the sample (rounding up)
    num_upsamplers: int  # upsamplers that run up to block k (each returns to the next skip's size)
    latent_multiple: int = 1  # the network's own size rule: diffusion-space sides must be multiples of it
    static_image_size: tuple[int, int] | None = None  # (W, H) a static export was made for; None: any size

    @classmethod
    def of(cls, network: Any, encoder: Any | None) -> NetworkGeometry:
        """The geometry of a truncated network (its feature block) and its encoder (None: pixel space)."""
        return cls(
            latent_channels=int(encoder.latent_channels if encoder is not None else network.in_channels),
            downsample_factor=int(encoder.downsample_factor) if encoder is not None else 1,
            scaling_factor=float(encoder.scaling_factor) if encoder is not None else 1.0,
            feature_channels=int(network.out_channels),
            num_downsamplers=int(network.num_downsamplers),
            num_upsamplers=int(network.num_upsamplers()),
            latent_multiple=int(network.size_multiple),
        )

    @property
    def size_multiple(self) -> int:
        """Image width and height must be multiples of this (8 for SD, 32 for ADM)."""
        return self.downsample_factor * self.latent_multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkGeometry:
        """Inverse of :meth:`to_dict`; fields missing from older records take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the diffusion-space sample of an image of ``height`` x ``width`` pixels.

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
        """(h', w') of the feature for a diffusion-space sample of ``h`` x ``w``.

        Each downsampler halves, rounding up (a stride-2 conv with padding 1); each upsampler up to block k
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
