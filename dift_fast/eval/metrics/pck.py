"""PCK (percentage of correct keypoints) as DIFT's SPair-71k evaluation computes it (spec §5).

A predicted keypoint is correct when ``distance / threshold <= alpha`` where the threshold is
``max(x2 - x1, y2 - y1)`` of the target bounding box (no +1). The division is done first, exactly as the
reference's ``(dist / threshold) <= 0.1``, so results agree bit for bit at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PckAccumulator", "bbox_threshold", "correct_keypoints", "keypoint_bbox_threshold"]


def bbox_threshold(bbox: Sequence[float]) -> float:
    """``max(x2 - x1, y2 - y1)`` of a box ``[x1, y1, x2, y2]`` (SPair's ``trg_bndbox``; no +1)."""
    if len(bbox) != 4:
        raise ValueError(f"bbox must be [x1, y1, x2, y2], got {list(bbox)}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return max(x2 - x1, y2 - y1)


def keypoint_bbox_threshold(points: np.ndarray) -> float:
    """The bbox threshold of the box around ``points`` [N, 2] (PF-WILLOW has no object boxes)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return 0.0
    extent = pts.max(axis=0) - pts.min(axis=0)
    return float(extent.max())


def correct_keypoints(pred: np.ndarray, gt: np.ndarray, threshold: float, alpha: float) -> np.ndarray:
    """Boolean [N]: ``||pred - gt|| / threshold <= alpha`` (a zero threshold accepts only exact hits).

    Args:
        pred: predicted points [N, 2] (x, y).
        gt: ground-truth points [N, 2] (x, y).
        threshold: the normalising length (e.g. :func:`bbox_threshold` of the target box).
        alpha: the PCK level, e.g. 0.1.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    dist = np.sqrt(((pred - gt) ** 2).sum(axis=1))
    if threshold <= 0:
        return dist == 0
    return (dist / threshold) <= alpha


@dataclass
class _Counts:
    pair_pck: list[float] = field(default_factory=list)
    correct: int = 0
    total: int = 0
    empty_pairs: int = 0


class PckAccumulator:
    """Collects per-pair results; reports per-image (mean over pairs) and per-point PCK, overall and per category.

    "Per image" pools all pairs (a mean over pairs, not a mean of category means); "per point" is total correct
    over total keypoints. A pair without keypoints has no PCK: it is counted in ``empty_pairs`` and left out of
    both means (the reference would divide by zero).
    """

    def __init__(self) -> None:
        self._all = _Counts()
        self._categories: dict[str, _Counts] = {}

    def add(self, category: str, correct: np.ndarray) -> None:
        """Record one pair: ``correct`` is the boolean [N] of its keypoints."""
        correct = np.asarray(correct, dtype=bool).reshape(-1)
        for counts in (self._all, self._categories.setdefault(category, _Counts())):
            if correct.size == 0:
                counts.empty_pairs += 1
                continue
            counts.pair_pck.append(float(correct.mean()))
            counts.correct += int(correct.sum())
            counts.total += int(correct.size)

    @staticmethod
    def _summary(c: _Counts) -> dict[str, float | int | None]:
        return {
            "per_image": float(np.mean(c.pair_pck)) * 100 if c.pair_pck else None,
            "per_point": c.correct / c.total * 100 if c.total else None,
            "pairs": len(c.pair_pck),
            "keypoints": c.total,
            "empty_pairs": c.empty_pairs,
        }

    def overall(self) -> dict[str, float | int | None]:
        """PCK in percent over all pairs: per_image, per_point, pairs, keypoints, empty_pairs."""
        return self._summary(self._all)

    def per_category(self) -> dict[str, dict[str, float | int | None]]:
        return {cat: self._summary(c) for cat, c in sorted(self._categories.items())}
