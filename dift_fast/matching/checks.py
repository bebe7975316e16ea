"""Input checks shared by the matchers: feature maps, image sizes, pixel points and descriptor sets.

Each raises ``ValueError``/``TypeError`` naming the argument and its actual shape or value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["as_points", "check_descriptors", "check_map", "check_points", "check_size", "map_and_size"]


def as_points(points: object, name: str = "points") -> torch.Tensor:
    """``points`` (a tensor, array or nested sequence) as a real-valued tensor ``[N, 2]``, or a clear ValueError.

    Refuses what cannot be coordinates: ragged or non-numeric sequences, integers too large for int64, bool and
    complex values, NaN and Inf.
    """
    try:
        pts = points if isinstance(points, torch.Tensor) else torch.as_tensor(points)
    except (RuntimeError, TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{name} must be [N, 2] (x, y) numbers, got {_short(points)} ({err})") from None
    if pts.dtype == torch.bool or pts.is_complex():
        raise ValueError(f"{name} must be [N, 2] real (x, y) coordinates, got a {pts.dtype} tensor")
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise ValueError(f"{name} must be [N, 2] (x, y) pixel coordinates, got shape {list(pts.shape)}")
    if pts.is_floating_point() and not torch.isfinite(pts).all():
        i = int((~torch.isfinite(pts)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name}[{i}] = {pts[i].tolist()} is not finite (NaN or Inf)")
    return pts


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_points(points: object, size: tuple[int, int], name: str = "points") -> torch.Tensor:
    """Validate integer pixel points [N, 2] (x, y) against an image ``size`` (W, H); returns a long tensor.

    Floats are rounded to the nearest pixel; NaN, Inf and huge values are refused before any conversion.
    """
    pts = as_points(points, name)
    w, h = size
    # Compared in float64 (exact for every int64 and float32 value up to 2**53), before converting to int64: a
    # huge float would otherwise wrap around in the cast.
    coords = pts.double().round() if pts.is_floating_point() else pts.double()
    bad = (coords[:, 0] < 0) | (coords[:, 0] > w - 1) | (coords[:, 1] < 0) | (coords[:, 1] > h - 1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        x, y = (f"{v:g}" if pts.is_floating_point() else str(int(v)) for v in pts[i].tolist())
        raise ValueError(
            f"{name}[{i}] = ({x}, {y}) is outside the {w}x{h} image (x must be in 0..{w - 1}, y in 0..{h - 1})"
        )
    return coords.long()


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


def map_and_size(
    feat: object, size: Sequence[int] | None, name: str, size_name: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A feature map and its image's (width, height): from an ``ImageFeatures`` (its map and ``original_size``,
    :mod:`dift_fast.pair`; ``size`` may be omitted), or from a tensor ``[C, h, w]`` and ``size``. ``name`` and
    ``size_name`` are the caller's argument names, used in the messages.

    Raises:
        TypeError: a tensor without its size.
        ValueError: an ``ImageFeatures`` with a different ``size`` given as well.
    """
    if hasattr(feat, "features") and hasattr(feat, "original_size"):  # ImageFeatures, without importing it
        own = check_size(feat.original_size, f"{name}.original_size")
        if size is not None and check_size(size, size_name) != own:
            raise ValueError(f"{name} is an ImageFeatures of a {own[0]}x{own[1]} image, but a size {tuple(size)} "
                             "was given too; leave the size out")
        return check_map(feat.features, f"{name}.features"), own
    if size is None:
        raise TypeError(f"{name} is a tensor: give its image's size (width, height) too, or pass an ImageFeatures "
                        "(dift_fast.extract_features / FeatureBatch[i]), which carries it")
    return check_map(feat, name), check_size(size, size_name)


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
