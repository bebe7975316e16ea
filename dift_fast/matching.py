"""Point transfer between two feature maps, computed literally as the spec's §4 (the oracle for faster matchers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["match_points_reference", "match_points", "check_points"]


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


def _check_map(feat: torch.Tensor, name: str) -> torch.Tensor:
    if feat.ndim == 4 and feat.shape[0] == 1:
        feat = feat[0]
    if feat.ndim != 3:
        raise ValueError(f"{name} must be a feature map [C, h, w] (or [1, C, h, w]), got {list(feat.shape)}")
    return feat


def match_points_reference(
    src_feat: torch.Tensor,  # [C, hs, ws]
    tgt_feat: torch.Tensor,  # [C, ht, wt]
    src_points: torch.Tensor | Sequence[Sequence[float]],  # [N, 2] (x, y) in source pixels
    src_size: tuple[int, int],  # (W, H) of the source image
    tgt_size: tuple[int, int],  # (W, H) of the target image
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, 2] (x, y) target pixels, [N] cosine
    """The reference's point transfer: upsample both maps to image size, normalise, cosine argmax.

    Memory and work are C x Ht x Wt per pair; use :func:`match_points` for anything beyond a check.
    Ties go to the first maximum in row-major order (``torch.argmax``).
    """
    src_feat, tgt_feat = _check_map(src_feat, "src_feat"), _check_map(tgt_feat, "tgt_feat")
    if src_feat.shape[0] != tgt_feat.shape[0]:
        raise ValueError(f"feature dimensions differ: src {src_feat.shape[0]}, tgt {tgt_feat.shape[0]}")
    pts = check_points(torch.as_tensor(src_points), src_size, "src_points").to(src_feat.device)
    (ws, hs), (wt, ht) = src_size, tgt_size
    src_up = F.interpolate(src_feat[None].float(), size=(hs, ws), mode="bilinear", align_corners=False)[0]
    tgt_up = F.interpolate(tgt_feat[None].float(), size=(ht, wt), mode="bilinear", align_corners=False)[0]
    q = src_up[:, pts[:, 1], pts[:, 0]].T  # [N, C]
    q = F.normalize(q, dim=1)
    tgt = F.normalize(tgt_up.flatten(1), dim=0)  # [C, Ht*Wt]
    cos = q @ tgt  # [N, Ht*Wt]
    best, idx = cos.max(dim=1)
    return torch.stack([idx % wt, idx // wt], dim=1), best


def match_points(
    src_feat: torch.Tensor,
    tgt_feat: torch.Tensor,
    src_points: torch.Tensor | Sequence[Sequence[float]],
    src_size: tuple[int, int],
    tgt_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer ``src_points`` (x, y) from the source image to the target image (spec §4).

    Args:
        src_feat: source feature map ``[C, hs, ws]``.
        tgt_feat: target feature map ``[C, ht, wt]``.
        src_points: ``[N, 2]`` integer pixel coordinates (x, y) in the source image.
        src_size: (width, height) of the original source image.
        tgt_size: (width, height) of the original target image.

    Returns:
        ``([N, 2] long target points (x, y), [N] cosine similarities)``.
    """
    return match_points_reference(src_feat, tgt_feat, src_points, src_size, tgt_size)
