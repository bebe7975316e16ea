"""PCK of joints propagated through JHMDB videos, as the video-correspondence papers score it (CRW's eval_pck.py).

- Every frame but the first (whose joints are given) is scored.
- Per frame, the threshold is ``0.6 x`` the diagonal of the box around that frame's ground-truth joints,
  ``0.6 * ||(max x - min x, max y - min y)||``, taken over the joints that were predicted (visible).
- A joint is correct when ``||pred - gt|| / threshold <= alpha`` (:func:`~.pck.correct_keypoints`), alpha 0.1
  and 0.2. A joint without a prediction (its propagated heat map is zero) is not scored.
- PCK@alpha is the mean over joints of each joint's PCK over all scored frames of all videos (not pooled over
  points); a joint never scored is left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pck import correct_keypoints

__all__ = ["BOX_FRACTION", "PCK_ALPHAS", "JointPckAccumulator", "person_threshold"]

PCK_ALPHAS = (0.1, 0.2)
BOX_FRACTION = 0.6  # threshold = BOX_FRACTION x the diagonal of the ground-truth joints' box


def person_threshold(gt: np.ndarray, visible: np.ndarray) -> float:
    """``0.6 * ||(max - min)||`` of the visible ground-truth joints ``gt`` [J, 2] (0 when none is visible)."""
    pts = np.asarray(gt, dtype=np.float64).reshape(-1, 2)[np.asarray(visible, dtype=bool).reshape(-1)]
    if len(pts) == 0:
        return 0.0
    return BOX_FRACTION * float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0)))


class JointPckAccumulator:
    """Collects per-joint hits over videos; reports PCK at each alpha, per joint and per video, in percent."""

    def __init__(self, n_joints: int, alphas: Sequence[float] = PCK_ALPHAS,
                 joint_names: Sequence[str] | None = None) -> None:
        if joint_names is not None and len(joint_names) != n_joints:
            raise ValueError(f"{len(joint_names)} joint names for {n_joints} joints")
        self.n_joints = n_joints
        self.alphas = tuple(alphas)
        self.joint_names = list(joint_names) if joint_names is not None else [f"joint {j}" for j in range(n_joints)]
        self.correct = np.zeros((len(self.alphas), n_joints), dtype=np.int64)
        self.total = np.zeros(n_joints, dtype=np.int64)

    def add_video(self, gt: np.ndarray, pred: np.ndarray, visible: np.ndarray) -> dict[str, float | int | None]:
        """Score one video: ``gt``, ``pred`` [T, J, 2] (x, y) pixels and ``visible`` [T, J]; frame 0 is skipped.

        Returns the video's own PCK (pooled over its scored joints) and how many joints were scored.
        """
        gt = np.asarray(gt, dtype=np.float64)
        pred = np.asarray(pred, dtype=np.float64)
        visible = np.asarray(visible, dtype=bool)
        if gt.shape != pred.shape or gt.ndim != 3 or gt.shape[1:] != (self.n_joints, 2):
            raise ValueError(f"gt {list(gt.shape)} and pred {list(pred.shape)} must both be [T, {self.n_joints}, 2]")
        if visible.shape != gt.shape[:2]:
            raise ValueError(f"visible {list(visible.shape)} must be [T, J] = {list(gt.shape[:2])}")
        correct = np.zeros((len(self.alphas), self.n_joints), dtype=np.int64)
        total = np.zeros(self.n_joints, dtype=np.int64)
        for t in range(1, len(gt)):
            vis = visible[t]
            if not vis.any():
                continue
            thr = person_threshold(gt[t], vis)
            for a, alpha in enumerate(self.alphas):
                correct[a, vis] += correct_keypoints(pred[t, vis], gt[t, vis], thr, alpha)
            total[vis] += 1
        self.correct += correct
        self.total += total
        out: dict[str, float | int | None] = {"frames scored": max(len(gt) - 1, 0), "joints scored": int(total.sum())}
        for a, alpha in enumerate(self.alphas):
            out[_name(alpha)] = float(correct[a].sum() / total.sum() * 100) if total.sum() else None
        return out

    def summary(self) -> dict[str, float | None]:
        """PCK@alpha in percent: the mean over the joints that were scored at least once."""
        scored = self.total > 0
        out: dict[str, float | None] = {}
        for a, alpha in enumerate(self.alphas):
            per_joint = self.correct[a, scored] / self.total[scored]
            out[_name(alpha)] = float(per_joint.mean() * 100) if scored.any() else None
        return out

    def per_joint(self) -> dict[str, dict[str, float | int | None]]:
        out = {}
        for j, name in enumerate(self.joint_names):
            row: dict[str, float | int | None] = {
                _name(alpha): float(self.correct[a, j] / self.total[j] * 100) if self.total[j] else None
                for a, alpha in enumerate(self.alphas)
            }
            row["points"] = int(self.total[j])
            out[name] = row
        return out


def _name(alpha: float) -> str:
    return f"PCK@{alpha:g}"
