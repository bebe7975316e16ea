"""HPatches homography estimation accuracy as DIFT's ``eval_homography.py`` computes it (spec §5).

Per pair (image 1 against image k): de-duplicate keypoints, mutual-nearest-neighbour matches under cosine
similarity, ``cv2.findHomography(..., cv2.LMEDS, ransacReprojThreshold=3)``, then the mean distance between the
four image corners mapped by the true and the estimated homography. A pair is correct at threshold ``e`` when
that error is ``<= e``. A failed estimate (fewer than 4 matches, no homography, a corner mapped to infinity)
has an infinite error: it is a failure at every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "THRESHOLDS",
    "HomographyAccumulator",
    "corner_error",
    "dedup_keypoints",
    "estimate_homography",
    "match_and_score",
]

THRESHOLDS = (1.0, 3.0, 5.0)  # pixels: np.linspace(1, 5, 3) in the reference


def dedup_keypoints(keypoints: np.ndarray, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated keypoints as ``np.unique(keypoints, axis=0)`` does (rows come back sorted)."""
    keypoints = np.asarray(keypoints)
    if len(keypoints) == 0:
        return keypoints.reshape(0, 2), descriptors[:0]
    unique, index = np.unique(keypoints, return_index=True, axis=0)
    return unique, descriptors[index]


def estimate_homography(pts0: np.ndarray, pts1: np.ndarray) -> np.ndarray | None:
    """LMedS homography mapping ``pts0`` [N, 2] onto ``pts1`` [N, 2]; None when it cannot be estimated."""
    import cv2

    if len(pts0) < 4:
        return None
    src = np.asarray(pts0, dtype=np.float32).reshape(-1, 1, 2)
    dst = np.asarray(pts1, dtype=np.float32).reshape(-1, 1, 2)
    try:
        H, _ = cv2.findHomography(src, dst, cv2.LMEDS, ransacReprojThreshold=3)
    except cv2.error:
        return None
    if H is None or H.shape != (3, 3) or not np.isfinite(H).all():
        return None
    return H


def corner_error(H_gt: np.ndarray, H_est: np.ndarray | None, size: tuple[int, int]) -> float:
    """Mean distance of the corners (0,0), (0,h-1), (w-1,0), (w-1,h-1) of a ``size`` (W, H) image under both maps.

    Returns ``inf`` for a missing estimate or a corner sent to infinity (a degenerate homography).
    """
    if H_est is None:
        return float("inf")
    w, h = size
    corners = np.array([[0, 0, 1], [0, h - 1, 1], [w - 1, 0, 1], [w - 1, h - 1, 1]], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        real = corners @ np.asarray(H_gt, dtype=np.float64).T
        real = real[:, :2] / real[:, 2:]
        est = corners @ np.asarray(H_est, dtype=np.float64).T
        est = est[:, :2] / est[:, 2:]
        err = float(np.mean(np.linalg.norm(real - est, axis=1)))
    return err if np.isfinite(err) else float("inf")


def match_and_score(
    kpts0: np.ndarray,  # [N, 2] (x, y) in image 1
    desc0: torch.Tensor,  # [N, C]
    kpts1: np.ndarray,  # [M, 2] (x, y) in image k
    desc1: torch.Tensor,  # [M, C]
    H_gt: np.ndarray,  # [3, 3] image 1 -> image k
    size0: tuple[int, int],  # (W, H) of image 1
) -> tuple[float, int]:
    """De-duplicate, mutual-NN match (cosine), estimate and score one pair; returns (corner error, matches)."""
    from ...matching import mutual_nearest_neighbors

    kpts0, desc0 = dedup_keypoints(kpts0, desc0)
    kpts1, desc1 = dedup_keypoints(kpts1, desc1)
    if len(kpts0) == 0 or len(kpts1) == 0:
        return float("inf"), 0
    matches0, _ = mutual_nearest_neighbors(torch.as_tensor(desc0), torch.as_tensor(desc1), metric="cosine", backend="torch")
    matches0 = matches0.cpu().numpy()
    valid = matches0 >= 0
    pts0 = np.asarray(kpts0)[valid]
    pts1 = np.asarray(kpts1)[matches0[valid]]
    H = estimate_homography(pts0, pts1)
    return corner_error(H_gt, H, size0), int(valid.sum())


class HomographyAccumulator:
    """Accuracy at each threshold, overall and for illumination (``i_``) and viewpoint (``v_``) sequences."""

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.errors: dict[str, list[float]] = {"illumination": [], "viewpoint": []}

    def add(self, sequence: str, error: float) -> None:
        """Record one pair of ``sequence`` (its name starts with ``i_`` or ``v_``, as in HPatches)."""
        if sequence.startswith("i_"):
            self.errors["illumination"].append(error)
        elif sequence.startswith("v_"):
            self.errors["viewpoint"].append(error)
        else:
            raise ValueError(f"sequence {sequence!r}: HPatches names start with 'i_' (illumination) or 'v_'")

    def accuracy(self) -> dict[str, dict[str, float | None]]:
        """Percent of pairs with corner error <= each threshold: {"overall"|"illumination"|"viewpoint": {"1px": ..}}."""
        groups = {
            "overall": self.errors["illumination"] + self.errors["viewpoint"],
            "illumination": self.errors["illumination"],
            "viewpoint": self.errors["viewpoint"],
        }
        out: dict[str, dict[str, float | None]] = {}
        for name, errs in groups.items():
            arr = np.asarray(errs, dtype=np.float64)
            out[name] = {
                f"{t:g}px": float(np.mean(arr <= t) * 100) if arr.size else None for t in self.thresholds
            }
        return out

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.errors.items()}
