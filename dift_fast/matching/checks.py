"""Input checks shared by the matchers: feature maps, image sizes, pixel points and descriptor sets.

Each raises ``ValueError``/``TypeError`` naming the argument and its actual shape or value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_descriptors", "check_map", "check_points", "check_size"]


def check_points(points: torch.Tensor, size: tuple[int, int], name: str = "points") -> torch.Tensor:
    """Validate integer pixel points [N, 2] (x, y) against an image ``size`` (W, H); returns a long tensor."""
    pts = torch.as_tensor(points)
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise ValueError(f"{name} must be [N, 2] (x, y) pixel coordinates, got shape {list(pts.shape)}")
    if pts.is_floating_point():
        if not torch.isfinite(pts).all():
            raise ValueError(f"{name} contains NaN or Inf")
        pts = pts.round()
    pts = pts.long()
    w, h = size
    bad = (pts[:, 0] < 0) | (pts[:, 0] >= w) | (pts[:, 1] < 0) | (pts[:, 1] >= h)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}[{i}] = ({int(pts[i, 0])}, {int(pts[i, 1])}) is outside the {w}x{h} image "
            f"(x must be in 0..{w - 1}, y in 0..{h - 1})"
        )
    return pts


def check_map(feat: torch.Tensor, name: str) -> torch.Tensor:
    """A feature map ``[C, h, w]`` (a leading batch of 1 is dropped), non-empty."""
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [C, h, w], got {type(feat).__name__}")
    if feat.ndim == 4 and feat.shape[0] == 1:
        feat = feat[0]
    if feat.ndim != 3:
        raise ValueError(f"{name} must be a feature map [C, h, w] (or [1, C, h, w]), got {list(feat.shape)}")
    if 0 in feat.shape:
        raise ValueError(f"{name} is empty: shape {list(feat.shape)}")
    return feat


def check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    """An image size (width, height) of positive integers."""
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (width, height), got {size!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{name} must be a positive (width, height), got {size!r}")
    return w, h


def check_descriptors(desc: torch.Tensor, name: str) -> torch.Tensor:
    """Descriptors ``[N, C]`` as contiguous float32."""
    if not isinstance(desc, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, C], got {type(desc).__name__}")
    if desc.ndim != 2:
        raise ValueError(f"{name} must be descriptors [N, C], got shape {list(desc.shape)}")
    return desc.float().contiguous()
