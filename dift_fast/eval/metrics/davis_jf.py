"""DAVIS region similarity J and contour accuracy F, as the official davis2017-evaluation defines them.

- J: intersection over union of the binary masks; 1 when both are empty.
- F: boundary F-measure. Boundaries are 1-pixel maps (``seg2bmap``); a boundary pixel is matched when the
  other boundary, dilated by a disk of radius ``ceil(0.008 * image diagonal)``, covers it. Precision and recall
  follow the official special cases (both empty -> 1, one empty -> 0).
- Semi-supervised protocol: every object of the first annotated frame is scored on every frame but the first and
  the last; the per-object mean over frames is averaged over all objects of all videos (J-Mean, F-Mean), and
  J&F-Mean is their average. Pixels labelled 255 are background (the official loader sets them to 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BOUND_TH", "JFAccumulator", "f_measure", "jaccard", "score_video", "seg2bmap"]

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (>= 1: in pixels)


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J of two binary masks [H, W]; 1.0 when both are empty."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} masks must have the same shape")
    union = np.sum(gt | pred)
    if union == 0:
        return 1.0
    return float(np.sum(gt & pred) / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary map of a binary mask (boundaries offset half a pixel towards the origin)."""
    seg = np.asarray(seg, dtype=bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Contour accuracy F of two binary masks [H, W]."""
    import cv2
    from skimage.morphology import disk

    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} masks must have the same shape")
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    fg_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    kernel = disk(bound_pix).astype(np.uint8)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel)
    n_fg = int(fg_boundary.sum())
    n_gt = int(gt_boundary.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float(np.sum(fg_boundary & (gt_dil > 0)) / n_fg)
        recall = float(np.sum(gt_boundary & (fg_dil > 0)) / n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_video(gt_labels: Sequence[np.ndarray], pred_labels: Sequence[np.ndarray]) -> dict[int, dict[str, float]]:
    """Per-object J and F means of one video (semi-supervised protocol).

    Args:
        gt_labels: the annotation of every frame, label maps [H, W] (0 background, 1..K objects, 255 void).
        pred_labels: the predicted label maps of the same frames (the first frame's is not scored).

    Returns:
        ``{object_id: {"J": mean J, "F": mean F}}`` for the objects 1..K of the first frame; a video of fewer
        than three frames has no scored frames and its means are NaN.
    """
    if len(gt_labels) != len(pred_labels):
        raise ValueError(f"{len(gt_labels)} annotated frames but {len(pred_labels)} predictions")
    gts = [np.where(np.asarray(g) == 255, 0, np.asarray(g)) for g in gt_labels]
    preds = [np.asarray(p) for p in pred_labels]
    n_objects = int(gts[0].max()) if gts else 0
    scored = range(1, len(gts) - 1)
    out = {}
    for obj in range(1, n_objects + 1):
        js = [jaccard(gts[i] == obj, preds[i] == obj) for i in scored]
        fs = [f_measure(gts[i] == obj, preds[i] == obj) for i in scored]
        out[obj] = {
            "J": float(np.mean(js)) if js else float("nan"),
            "F": float(np.mean(fs)) if fs else float("nan"),
        }
    return out


class JFAccumulator:
    """J-Mean, F-Mean and J&F-Mean over all objects of all videos, in percent."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, float]] = {}

    def add(self, video: str, per_object: dict[int, dict[str, float]]) -> None:
        for obj, scores in per_object.items():
            self.objects[f"{video}_{obj}"] = scores

    def summary(self) -> dict[str, float | None]:
        if not self.objects:
            return {"J&F-Mean": None, "J-Mean": None, "F-Mean": None}
        j = float(np.nanmean([s["J"] for s in self.objects.values()])) * 100
        f = float(np.nanmean([s["F"] for s in self.objects.values()])) * 100
        return {"J&F-Mean": (j + f) / 2, "J-Mean": j, "F-Mean": f}
