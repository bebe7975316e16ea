"""synthetic-homography: the end-to-end check of the harness on photographs with known homographies.

Scored two ways: the HPatches metric (keypoints, mutual NN, LMedS, corner error at 1/3/5 px, by illumination and
viewpoint pairs) and PCK of point transfer on a grid of projected points (threshold: alpha times the longer
side of the target image). Its numbers are not comparable with any paper; with random weights they mean nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..features import FeatureCache, ensure_features
from ..keypoints import detect_keypoints, keypoint_descriptors
from ..metrics.homography import HomographyAccumulator, match_and_score
from ..metrics.pck import PckAccumulator, correct_keypoints
from ..report import Report
from ..synthetic import grid_points, load_photos, make_pairs
from .common import array_item, compute_device, standard_notes
from .hpatches import homography_metrics

__all__ = ["SYNTHETIC_NOTE", "run_synthetic"]

SYNTHETIC_NOTE = ("synthetic-homography tests the harness end to end; its numbers are not comparable with any "
                  "paper's, and with random weights they mean nothing")
ALPHAS = (0.05, 0.10)


def run_synthetic(
    extractor: Any,
    cache: FeatureCache,
    *,
    n_pairs: int = 16,
    photos_dir: str | Path | None = None,
    seed: int = 0,
    size: tuple[int, int] = (384, 288),
    max_keypoints: int = 1000,
    progress: bool = True,
) -> Report:
    """Build ``n_pairs`` synthetic pairs and score them."""
    from tqdm.auto import tqdm

    from ...matching import match_points

    start = time.perf_counter()
    photos = load_photos(photos_dir)
    pairs = make_pairs(n_pairs, seed=seed, size=size, photos=photos)
    image_size, prompt = extractor.config.image_size, extractor.config.prompt
    items = {p.name: (array_item(f"{p.name}/0", p.image0, image_size, prompt),
                      array_item(f"{p.name}/1", p.image1, image_size, prompt)) for p in pairs}
    computed = ensure_features(extractor, [it for two in items.values() for it in two], cache, progress=progress,
                               desc="synthetic features")
    device = compute_device(extractor)
    hom = HomographyAccumulator()
    pcks = {a: PckAccumulator() for a in ALPHAS}
    for p in tqdm(pairs, desc="synthetic pairs", unit="pair", disable=not progress):
        f0 = cache.get(items[p.name][0].ident).to(device)
        f1 = cache.get(items[p.name][1].ident).to(device)
        k0, k1 = detect_keypoints(p.image0, max_keypoints), detect_keypoints(p.image1, max_keypoints)
        err, _ = match_and_score(k0, keypoint_descriptors(f0, k0, size), k1, keypoint_descriptors(f1, k1, size),
                                 p.H, size)
        hom.add(p.name, err)
        pts0, pts1 = grid_points(p.H, size, size)
        kind = "illumination" if p.name.startswith("i_") else "viewpoint"
        if len(pts0):
            pred, _ = match_points(f0, f1, pts0, size, size)
            pred = pred.cpu().numpy()
        else:
            pred = np.zeros((0, 2))
        for a, acc in pcks.items():
            acc.add(kind, correct_keypoints(pred, pts1, float(max(size)), a))
    metrics = homography_metrics(hom)
    for a, acc in pcks.items():
        metrics[f"grid PCK@{a:.2f}"] = acc.overall()["per_point"]
    return Report(
        benchmark="synthetic-homography",
        metrics=metrics,
        details={"accuracy": hom.accuracy(), **{f"grid PCK@{a:.2f}": acc.per_category() for a, acc in pcks.items()}},
        counts={"pairs": len(pairs), "photos": len(photos), "images extracted": computed},
        notes=[SYNTHETIC_NOTE, *standard_notes("synthetic-homography", extractor)],
        config=extractor.config.to_dict(),
        seconds=time.perf_counter() - start,
    )
