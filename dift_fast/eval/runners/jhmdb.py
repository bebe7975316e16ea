"""JHMDB keypoint propagation: the first frame's 15 joints carried through each video, scored by PCK@0.1/0.2.

The joints travel as heat maps through the same label propagation as DAVIS (:mod:`..propagation`): a Gaussian
(sigma 0.5 cells) per joint at feature resolution in the first frame, soft maps propagated frame by frame with the
first frame and a queue of recent frames as context, each joint read back as the value-weighted mean of its map's
3 largest cells (CRW's ``process_pose``), then scored against the ground truth (:mod:`..metrics.jhmdb_pck`).

Coordinates follow CRW: a joint at pixel ``p`` of the original frame sits at ``p * (resized / original) / stride``
in feature cells, and a cell coordinate ``c`` reads back as ``c * stride * (original / resized)`` pixels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.davis import frame_size_rule
from ..datasets.jhmdb import JHMDB_JOINTS, JhmdbVideo, load_jhmdb, read_joints
from ..features import FeatureCache, ensure_features
from ..metrics.jhmdb_pck import PCK_ALPHAS, JointPckAccumulator
from ..propagation import PropagationParams, VideoPropagator, heatmap_peaks, keypoint_heatmaps
from ..report import Report
from .common import compute_device, image_size_of, standard_notes
from .davis import frame_item

__all__ = ["HEATMAP_SIGMA", "READBACK_TOPK", "propagate_keypoints", "run_jhmdb"]

HEATMAP_SIGMA = 0.5  # cells: CRW's JhmdbSet default
READBACK_TOPK = 3  # cells averaged per joint when reading a heat map back (CRW's process_pose)


def propagate_keypoints(
    features: list[Any],  # per frame: () -> Tensor [C, h, w]
    first_points: np.ndarray,  # [J, 2] (x, y) feature cells in frame 0
    params: PropagationParams,
    device: Any,
    sigma: float = HEATMAP_SIGMA,
    readback_topk: int = READBACK_TOPK,
) -> tuple[np.ndarray, np.ndarray]:  # [T, J, 2] cells, [T, J] visible
    """Carry ``first_points`` through the frames; frame 0 is returned as given (all joints on the map visible)."""
    import torch

    feats0 = features[0]().to(device)
    first = keypoint_heatmaps(first_points, tuple(feats0.shape[1:]), sigma).to(device)
    _, vis0 = heatmap_peaks(first.cpu(), readback_topk)
    points = [np.asarray(first_points, dtype=np.float64)]
    visible = [vis0.numpy()]
    propagator = VideoPropagator(feats0, first, params)
    with torch.inference_mode():
        for load in features[1:]:
            soft = propagator.step(load().to(device))
            pts, vis = heatmap_peaks(soft.cpu(), readback_topk)
            points.append(pts.numpy())
            visible.append(vis.numpy())
    return np.stack(points), np.stack(visible)


def _score_video(extractor: Any, video: JhmdbVideo, cache: FeatureCache, params: PropagationParams,
                 short_side: int, acc: JointPckAccumulator, progress: bool) -> dict[str, Any]:
    joints = read_joints(video.joints_file)  # [T, J, 2] original pixels
    if joints.shape[1] != acc.n_joints:
        raise ValueError(f"JHMDB: {video.joints_file} has {joints.shape[1]} joints, expected {acc.n_joints}")
    n = min(len(video.frames), len(joints))  # a video with more frames than annotations is scored where both exist
    frames = video.frames[:n]
    original = image_size_of(frames[0])
    size = frame_size_rule(*original, short_side=short_side)
    items = [frame_item(f, size, extractor.config.prompt) for f in frames]
    ensure_features(extractor, items, cache, progress=progress, desc=f"jhmdb {video.name} features")
    h, w = cache.get(items[0].ident).shape[1:]
    stride = size[1] // h
    if (w * stride, h * stride) != size:
        raise ValueError(f"JHMDB: features {w}x{h} do not divide the frame size {size[0]}x{size[1]}")
    to_cells = np.array([size[0] / original[0], size[1] / original[1]]) / stride  # pixels -> cells, per axis
    cells, visible = propagate_keypoints([lambda i=i: cache.get(i.ident) for i in items], joints[0] * to_cells,
                                         params, compute_device(extractor))
    pred = cells / to_cells
    pred[0] = joints[0]  # the given frame (not scored)
    scores = acc.add_video(joints[:n], pred, visible)
    scores["frames without annotations"] = len(video.frames) - n
    scores["annotations without frames"] = len(joints) - n
    return scores


def run_jhmdb(
    extractor: Any,
    root: str | Path,
    cache: FeatureCache,
    *,
    split: str | Path | None = None,
    limit: int | None = None,
    params: PropagationParams | None = None,
    short_side: int = 480,
    progress: bool = True,
) -> Report:
    """Propagate the first frame's joints through the JHMDB videos of ``split`` (or the first ``limit``); PCK."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    params = params or PropagationParams.for_preset(extractor.config.preset)
    videos = load_jhmdb(root, split=split, limit=limit)
    acc = JointPckAccumulator(len(JHMDB_JOINTS), PCK_ALPHAS, JHMDB_JOINTS)
    per_video = {}
    for video in tqdm(videos, desc="jhmdb videos", unit="video", disable=not progress):
        per_video[video.name] = _score_video(extractor, video, cache, params, short_side, acc, progress)
    notes = standard_notes("jhmdb", extractor)
    if short_side != 480:
        notes.append(f"frames resized to short side {short_side} (dift-fast's choice: 480)")
    mismatched = [name for name, s in per_video.items()
                  if s["frames without annotations"] or s["annotations without frames"]]
    if mismatched:
        notes.append(f"{len(mismatched)} video(s) have different numbers of frames and annotated frames; scored "
                     f"where both exist: {', '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''}")
    return Report(
        benchmark="jhmdb",
        metrics=acc.summary(),
        details={
            "per joint": acc.per_joint(),
            "per video": per_video,
            "propagation": {"params": vars(params) | {"short_side": short_side, "heatmap_sigma": HEATMAP_SIGMA,
                                                      "readback_topk": READBACK_TOPK}},
        },
        counts={"videos": len(videos), "frames scored": sum(s["frames scored"] for s in per_video.values()),
                "joints scored": int(acc.total.sum())},
        notes=notes,
        config=extractor.config.to_dict(),
        seconds=time.perf_counter() - start,
    )
