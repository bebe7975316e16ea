"""Where the cells of a feature map are in the image: one rule for dense matches and dense index labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .checks import check_size

__all__ = ["cell_centers"]


def cell_centers(
    h: int,
    w: int,
    size: Sequence[int] | None = None,  # (W, H) of the image
    *,
    flat: torch.Tensor | None = None,  # [N] row-major cell indices; default every cell
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # [N, 2] (x, y)
    """Pixel centres of the cells of an ``h`` x ``w`` feature map in a ``size`` image, or cell indices without it.

    Cell (x, y) of the map covers pixels around ((x + 0.5)·W/w − 0.5, (y + 0.5)·H/h − 0.5), as bilinear upsampling
    (align_corners=False) places it. Computed in ``dtype``.
    """
    flat = torch.arange(h * w) if flat is None else flat
    xy = torch.stack([flat % w, flat // w], dim=1).to(dtype)
    if size is None:
        return xy
    W, H = check_size(size, "size")
    return (xy + 0.5) * xy.new_tensor([W / w, H / h]) - 0.5
