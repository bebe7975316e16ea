"""Labels of indexed vectors: (image id, x, y) packed into faiss' 64-bit id, and the labels of dense cells.

``image_id << 32 | y << 16 | x``; x = y = 65535 (``NO_XY``) for image-level vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..matching.cells import cell_centers

__all__ = ["NO_XY", "cell_pixel_labels", "pack_labels", "unpack_labels"]

NO_XY = 0xFFFF  # x and y of an image-level (pooled) vector
_MAX_XY = NO_XY - 1


def pack_labels(image_ids: torch.Tensor, xy: torch.Tensor | None) -> np.ndarray:  # [n] int64
    """(image id, x, y) -> faiss id. ``xy=None`` labels image-level vectors."""
    ids = torch.as_tensor(image_ids).long().reshape(-1)
    if ids.numel() and (ids.min() < 0 or ids.max() >= 2**31):
        raise ValueError(f"image ids must be in 0..2^31-1, got range {int(ids.min())}..{int(ids.max())}")
    if xy is None:
        x = y = torch.full_like(ids, NO_XY)
    else:
        xy = torch.as_tensor(xy).long()
        if xy.shape != (len(ids), 2):
            raise ValueError(f"xy must be [n, 2] (x, y) with n = {len(ids)} vectors, got {list(xy.shape)}")
        if xy.numel() and (xy.min() < 0 or xy.max() > _MAX_XY):
            raise ValueError(f"x and y must be in 0..{_MAX_XY}, got range {int(xy.min())}..{int(xy.max())}")
        x, y = xy[:, 0], xy[:, 1]
    return ((ids << 32) | (y << 16) | x).cpu().numpy().astype(np.int64)


def unpack_labels(labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:  # [..] -> image ids, [.., 2] xy
    """faiss ids -> (image ids, xy); −1 for missing results, and xy −1 for image-level vectors."""
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    missing = lab < 0
    image = torch.where(missing, -1, lab >> 32)
    x, y = lab & 0xFFFF, (lab >> 16) & 0xFFFF
    xy = torch.stack([x, y], dim=-1)
    return image, torch.where((missing | (x == NO_XY))[..., None], -1, xy)


def cell_pixel_labels(h: int, w: int, image_size: Sequence[int] | None = None) -> torch.Tensor:  # [h*w, 2] long
    """(x, y) labels of every cell of an ``h`` x ``w`` map, row-major: the cell's centre in ``image_size`` (W, H)
    pixels, rounded and clamped at 0 (see :func:`dift_fast.matching.cells.cell_centers`), or the cell indices."""
    if image_size is None:
        return cell_centers(h, w).long()
    return cell_centers(h, w, image_size, dtype=torch.float64).round().clamp_min(0).long()
