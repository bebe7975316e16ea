"""Descriptors sampled from a DIFT feature map: at keypoints (bilinear) and per image (pooled)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .checks import as_points, check_map, check_size

__all__ = ["pooled_descriptors", "sample_descriptors"]


def sample_descriptors(
    feat: torch.Tensor,  # [C, h, w]
    points: torch.Tensor,  # [N, 2] float (x, y) in image pixels
    image_size: tuple[int, int],  # (W, H) of the original image
    convention: Literal["reference", "aligned"] = "reference",
) -> torch.Tensor:  # [N, C]
    """Bilinear descriptors at keypoints (``grid_sample`` semantics), not normalised.

    Args:
        feat: feature map ``[C, h, w]`` (or ``[1, C, h, w]``).
        points: ``[N, 2]`` (x, y) pixel coordinates in the original image; fractional allowed.
        image_size: (width, height) of the original image.
        convention: ``"reference"``: the DIFT HPatches code, g = (p − c)/c with c = ((W−1)/2, (H−1)/2) and
            grid_sample(align_corners=False, zero padding), which is half a feature cell off at the borders.
            ``"aligned"``: pixel centres, g = (2p + 1)/(W, H) − 1 with border padding; at integer pixels this
            equals reading the bilinearly upsampled map, i.e. the query vector of :func:`match_points`.

    Returns:
        ``[N, C]`` float32 descriptors.
    """
    feat = check_map(feat, "feat").float()
    W, H = check_size(image_size, "image_size")
    pts = as_points(points, "points").to(feat.device, torch.float64)
    # Keypoints may sit up to a pixel outside the image (hloc's -0.5 pixel-centre convention and rounding);
    # farther out is not a keypoint of this image (and huge values would lose all precision in float32).
    outside = (pts[:, 0] < -1) | (pts[:, 0] > W) | (pts[:, 1] < -1) | (pts[:, 1] > H)
    if outside.any():
        i = int(outside.nonzero()[0, 0])
        raise ValueError(f"points[{i}] = ({pts[i, 0].item():g}, {pts[i, 1].item():g}) is outside the {W}x{H} image "
                         f"(x must be in -1..{W}, y in -1..{H})")
    pts = pts.float()
    size = pts.new_tensor([W, H])
    if convention == "reference":
        c = (size - 1) / 2
        grid, padding = (pts - c) / c.clamp_min(0.5), "zeros"  # W == 1: the reference divides by zero; keep finite
    elif convention == "aligned":
        grid, padding = (2 * pts + 1) / size - 1, "border"
    else:
        raise ValueError(f"convention must be 'reference' or 'aligned', got {convention!r}")
    out = F.grid_sample(feat[None], grid[None, None], mode="bilinear", padding_mode=padding, align_corners=False)
    return out[0, :, 0].T.contiguous()


def pooled_descriptors(feats: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] or [C, h, w] -> [B, C]
    """Image-level descriptors: the mean of the L2-normalised cell descriptors, L2-normalised."""
    if feats.ndim == 3:
        feats = feats[None]
    if feats.ndim != 4:
        raise ValueError(f"feats must be [B, C, h, w] or [C, h, w], got {list(feats.shape)}")
    return F.normalize(F.normalize(feats.float(), dim=1).mean(dim=(2, 3)), dim=1)
