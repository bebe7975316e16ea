"""HPatches: homography estimation accuracy at 1/3/5 px from mutual-NN matches of DIFT descriptors (spec §5)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.hpatches import load_hpatches, load_keypoints
from ..features import FeatureCache, ensure_features
from ..keypoints import detect_keypoints, keypoint_descriptors
from ..metrics.homography import HomographyAccumulator, match_and_score
from ..report import Report
from .common import compute_device, file_item, image_size_of, standard_notes

__all__ = ["homography_metrics", "run_hpatches"]


def homography_metrics(acc: HomographyAccumulator) -> dict[str, float | None]:
    """Flat metric names ("overall 1px", "illumination 3px", ...) from an accumulator."""
    return {f"{group} {t}": v for group, row in acc.accuracy().items() for t, v in row.items()}


def run_hpatches(
    extractor: Any,
    root: str | Path,
    cache: FeatureCache,
    *,
    keypoints: str | Path | None = None,
    limit: int | None = None,
    max_keypoints: int = 1000,
    progress: bool = True,
) -> Report:
    """Evaluate HPatches sequences (or the first ``limit``); keypoints from ``keypoints`` or SIFT."""
    from tqdm.auto import tqdm

    from ...images import load_rgb

    start = time.perf_counter()
    seqs = load_hpatches(root, limit=limit)
    size = extractor.config.image_size
    items = {path: file_item(path, size, extractor.config.prompt) for s in seqs for path in s.images}
    computed = ensure_features(extractor, list(items.values()), cache, progress=progress, desc="hpatches features")
    device = compute_device(extractor)
    acc = HomographyAccumulator()
    n_matches = []
    for seq in tqdm(seqs, desc="hpatches sequences", unit="seq", disable=not progress):
        kps, descs, sizes = {}, {}, {}
        for k, path in enumerate(seq.images, start=1):
            sizes[k] = image_size_of(path)
            if keypoints is not None:
                kps[k] = load_keypoints(keypoints, seq.name, k)
            else:
                kps[k] = detect_keypoints(np.asarray(load_rgb(path)), max_keypoints)
            descs[k] = keypoint_descriptors(cache.get(items[path].ident).to(device), kps[k], sizes[k])
        for k in range(2, 7):
            err, n = match_and_score(kps[1], descs[1], kps[k], descs[k], seq.homographies[k], sizes[1])
            acc.add(seq.name, err)
            n_matches.append(n)
    notes = standard_notes("hpatches", extractor)
    if keypoints is None:
        notes.append("keypoints: OpenCV SIFT (the paper used 1,000 SuperPoint keypoints; pass --keypoints)")
    counts = {"sequences": len(seqs), "pairs": len(n_matches), **{f"{k} pairs": v for k, v in acc.counts().items()},
              "images extracted": computed}
    return Report(
        benchmark="hpatches",
        metrics=homography_metrics(acc),
        details={"accuracy": acc.accuracy(),
                 "matches": {"mean mutual-NN matches per pair": float(np.mean(n_matches)) if n_matches else 0.0}},
        counts=counts,
        notes=notes,
        config=extractor.config.to_dict(),
        seconds=time.perf_counter() - start,
    )
