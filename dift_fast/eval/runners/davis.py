"""DAVIS-2017 val: label propagation with DIFT features (spec §5), scored with J&F; predictions saved as PNGs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ...images import prepare_image
from ..datasets.davis import DavisVideo, frame_size_rule, load_davis, read_label_png
from ..features import FeatureCache, ImageItem, ensure_features, file_identity
from ..metrics.davis_jf import JFAccumulator, score_video
from ..propagation import PropagationParams, VideoPropagator, finalize_labels, to_one_hot
from ..report import Report
from .common import compute_device, image_size_of, standard_notes

__all__ = ["frame_item", "read_frame", "run_davis"]


def read_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A frame as the reference reads it: ``cv2.imread``, ``cv2.resize`` (bilinear) to ``size`` (W, H), RGB u8."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read video frame {path} (missing, or not an image OpenCV can decode)")
    return np.ascontiguousarray(cv2.resize(bgr, size)[:, :, ::-1])


def frame_item(path: Path, size: tuple[int, int], prompt: str) -> ImageItem:
    """A cache item for a video frame read by :func:`read_frame` at ``size`` (shared by DAVIS and JHMDB)."""
    return ImageItem(
        ident=file_identity(path, "davis-cv2-linear", *size, prompt),
        name=str(path),
        load=lambda: prepare_image(read_frame(path, size), size, name=str(path)),
        prompt=prompt,
    )


def _write_png(path: Path, labels: np.ndarray, palette: list[int] | None) -> None:
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    if palette:
        img.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _propagate_video(extractor: Any, video: DavisVideo, cache: FeatureCache, params: PropagationParams,
                     short_side: int, pred_dir: Path | None, progress: bool) -> tuple[list, list]:
    import torch
    from PIL import Image

    original = image_size_of(video.frames[0])
    size = frame_size_rule(*original, short_side=short_side)
    items = [frame_item(f, size, extractor.config.prompt) for f in video.frames]
    ensure_features(extractor, items, cache, progress=progress, desc=f"davis {video.name} features")
    device = compute_device(extractor)
    gt0, palette = read_label_png(video.first_annotation)
    gt0 = np.where(gt0 == 255, 0, gt0)
    feats0 = cache.get(items[0].ident).to(device)
    h, w = feats0.shape[1:]
    stride = size[1] // h
    if (w * stride, h * stride) != size:
        raise ValueError(f"DAVIS: features {w}x{h} do not divide the frame size {size[0]}x{size[1]}")
    small = np.array(Image.fromarray(gt0.astype(np.uint8)).resize((w, h), Image.NEAREST))
    first = to_one_hot(small, int(gt0.max()) + 1).to(device)
    propagator = VideoPropagator(feats0, first, params)
    preds = [gt0]
    with torch.inference_mode():
        for item in items[1:]:
            soft = propagator.step(cache.get(item.ident).to(device))
            preds.append(finalize_labels(soft, stride, original))
    if pred_dir is not None:
        for frame, labels in zip(video.frames, preds):
            _write_png(pred_dir / video.name / f"{frame.stem}.png", labels, palette)
    gts = [read_label_png(p)[0] for p in video.annotations]
    return gts, preds


def run_davis(
    extractor: Any,
    root: str | Path,
    cache: FeatureCache,
    *,
    limit: int | None = None,
    params: PropagationParams | None = None,
    short_side: int = 480,
    predictions_dir: str | Path | None = None,
    progress: bool = True,
) -> Report:
    """Propagate the first-frame masks of DAVIS-2017 val videos (or the first ``limit``) and score J&F."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    params = params or PropagationParams.for_preset(extractor.config.preset)
    videos = load_davis(root, limit=limit)
    pred_dir = Path(predictions_dir) if predictions_dir is not None else None
    acc = JFAccumulator()
    per_video = {}
    frames = 0
    for video in tqdm(videos, desc="davis videos", unit="video", disable=not progress):
        gts, preds = _propagate_video(extractor, video, cache, params, short_side, pred_dir, progress)
        if len(gts) != len(preds):
            raise ValueError(f"DAVIS: video {video.name} has {len(preds)} frames but {len(gts)} annotations")
        scores = score_video(gts, preds)
        acc.add(video.name, scores)
        frames += len(preds)
        per_video[video.name] = {
            "objects": len(scores),
            "J": float(np.mean([s["J"] for s in scores.values()])) * 100 if scores else None,
            "F": float(np.mean([s["F"] for s in scores.values()])) * 100 if scores else None,
        }
    notes = standard_notes("davis", extractor)
    if short_side != 480:
        notes.append(f"frames resized to short side {short_side} (protocol: 480)")
    return Report(
        benchmark="davis",
        metrics=acc.summary(),
        details={"per video": per_video, "propagation": {"params": vars(params) | {"short_side": short_side}}},
        counts={"videos": len(videos), "objects": len(acc.objects), "frames": frames},
        notes=notes,
        config=extractor.config.to_dict(),
        seconds=time.perf_counter() - start,
    )
