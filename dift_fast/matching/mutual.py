"""Mutual nearest neighbours between two descriptor sets, or between every cell of two feature maps."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..faiss_utils import knn
from .cells import cell_centers
from .checks import check_descriptors, check_map

__all__ = ["dense_mutual_nearest_neighbors", "mutual_nearest_neighbors"]


def mutual_nearest_neighbors(
    desc0: torch.Tensor,  # [N, C]
    desc1: torch.Tensor,  # [M, C]
    *,
    metric: Literal["cosine", "l2"] = "cosine",
    min_score: float | None = None,
    ratio: float | None = None,
    backend: Literal["auto", "faiss", "torch"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours between two descriptor sets, LightGlue conventions.

    Args:
        desc0: ``[N, C]`` descriptors of image 0.
        desc1: ``[M, C]`` descriptors of image 1 (same C, same device).
        metric: ``"cosine"`` (descriptors are L2-normalised first; score = cosine similarity) or ``"l2"``
            (score = Euclidean distance, lower is better).
        min_score: keep matches with cosine ≥ min_score (cosine) or distance ≤ min_score (l2).
        ratio: Lowe's ratio test on distances (d1/d2 < ratio), applied in both directions; for cosine the
            distance is that of the normalised descriptors, √(2 − 2·cos).
        backend: ``"faiss"`` (IndexFlatIP/L2; a GPU index for CUDA tensors when faiss has GPU support),
            ``"torch"`` (chunked matmul), or ``"auto"`` (faiss when installed).

    Returns:
        ``(matches0 [N] long, scores0 [N] float32)``: index into desc1 or −1; unmatched scores are 0 (cosine)
        or +inf (l2).
    """
    desc0, desc1 = check_descriptors(desc0, "desc0"), check_descriptors(desc1, "desc1")
    if desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptor dimensions differ: desc0 is {list(desc0.shape)}, desc1 {list(desc1.shape)}")
    if desc0.device != desc1.device:
        raise ValueError(f"desc0 is on {desc0.device} but desc1 on {desc1.device}; move both to one device")
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    n, m = len(desc0), len(desc1)
    worst = 0.0 if metric == "cosine" else float("inf")
    matches0 = torch.full((n,), -1, dtype=torch.long, device=desc0.device)
    scores0 = torch.full((n,), worst, device=desc0.device)
    if n == 0 or m == 0:
        return matches0, scores0
    if metric == "cosine":
        desc0, desc1 = F.normalize(desc0, dim=1), F.normalize(desc1, dim=1)
    k = 2 if ratio is not None and min(n, m) >= 2 else 1
    s01, i01 = knn(desc1, desc0, k, metric=metric, backend=backend)  # [N, k]: best in desc1 for each desc0
    s10, i10 = knn(desc0, desc1, k, metric=metric, backend=backend)  # [M, k]
    best1 = i01[:, 0]
    ok = i10[best1, 0] == torch.arange(n, device=desc0.device)
    score = s01[:, 0]
    if min_score is not None:
        ok &= score >= min_score if metric == "cosine" else score <= min_score
    if k == 2:
        ok &= _passes_ratio(s01, metric, ratio) & _passes_ratio(s10, metric, ratio)[best1]
    matches0[ok] = best1[ok]
    scores0[ok] = score[ok]
    return matches0, scores0


def _passes_ratio(scores: torch.Tensor, metric: str, ratio: float) -> torch.Tensor:  # [n, 2] -> [n] bool
    dist = (2 - 2 * scores).clamp_min(0).sqrt() if metric == "cosine" else scores
    return dist[:, 0] < ratio * dist[:, 1]


def dense_mutual_nearest_neighbors(
    feat0: torch.Tensor,  # [C, h0, w0]
    feat1: torch.Tensor,  # [C, h1, w1]
    *,
    size0: tuple[int, int] | None = None,
    size1: tuple[int, int] | None = None,
    metric: Literal["cosine", "l2"] = "cosine",
    min_score: float | None = None,
    ratio: float | None = None,
    backend: Literal["auto", "faiss", "torch"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours between every cell of two feature maps.

    Args:
        feat0, feat1: feature maps ``[C, h, w]``.
        size0, size1: optional (W, H) of the original images: coordinates are then pixel centres of the cells,
            ((x + 0.5)·W/w − 0.5, (y + 0.5)·H/h − 0.5); otherwise feature-cell indices.
        metric, min_score, ratio, backend: as :func:`mutual_nearest_neighbors`.

    Returns:
        ``(pts0 [K, 2] float32 (x, y), pts1 [K, 2] float32 (x, y), scores [K])`` of the K mutual matches.
    """
    feat0, feat1 = check_map(feat0, "feat0"), check_map(feat1, "feat1")
    m0, s0 = mutual_nearest_neighbors(feat0.flatten(1).T, feat1.flatten(1).T, metric=metric, min_score=min_score,
                                      ratio=ratio, backend=backend)
    i0 = (m0 >= 0).nonzero()[:, 0]
    i1 = m0[i0]
    return (cell_centers(*feat0.shape[1:], size0, flat=i0), cell_centers(*feat1.shape[1:], size1, flat=i1),
            s0[i0])
