"""SPair-71k: point transfer (spec §4) scored with PCK@0.1 of the target bounding box (spec §5)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.spair import load_spair_pairs
from ..features import FeatureCache, ensure_features
from ..metrics.pck import PckAccumulator, bbox_threshold, correct_keypoints
from ..report import Report
from .common import clamp_points, compute_device, file_item, standard_notes

__all__ = ["SPAIR_PROMPT", "run_spair"]

SPAIR_PROMPT = "a photo of a {category}"  # the category folder name, literally ("pottedplant", "tvmonitor")


def run_spair(
    extractor: Any,
    root: str | Path,
    cache: FeatureCache,
    *,
    limit: int | None = None,
    alpha: float = 0.1,
    prompt: str = SPAIR_PROMPT,
    progress: bool = True,
) -> Report:
    """Evaluate the SPair-71k test split (or its first ``limit`` pairs)."""
    from tqdm.auto import tqdm

    from ...matching import match_points

    start = time.perf_counter()
    pairs = load_spair_pairs(root, limit=limit)
    size = extractor.config.image_size
    items = {}
    for p in pairs:
        text = prompt.format(category=p.category)
        items[p.name] = (file_item(p.src_path, size, text), file_item(p.trg_path, size, text))
    needed = [it for p in pairs if len(p.src_kps) for it in items[p.name]]  # pairs without keypoints need none
    computed = ensure_features(extractor, needed, cache, progress=progress, desc="spair features")
    device = compute_device(extractor)
    acc = PckAccumulator()
    for p in tqdm(pairs, desc="spair pairs", unit="pair", disable=not progress):
        if len(p.src_kps) == 0:
            acc.add(p.category, np.zeros(0, dtype=bool))
            continue
        src_item, trg_item = items[p.name]
        pred, _ = match_points(cache.get(src_item.ident).to(device), cache.get(trg_item.ident).to(device),
                               clamp_points(p.src_kps, p.src_size), p.src_size, p.trg_size)
        acc.add(p.category, correct_keypoints(pred.cpu().numpy(), p.trg_kps, bbox_threshold(p.trg_bndbox), alpha))
    overall = acc.overall()
    name = f"PCK@{alpha:g}"
    return Report(
        benchmark="spair",
        metrics={f"{name} per image": overall["per_image"], f"{name} per point": overall["per_point"]},
        details={"per category": acc.per_category()},
        counts={"pairs": len(pairs), "keypoints": overall["keypoints"], "pairs without keypoints":
                overall["empty_pairs"], "images extracted": computed},
        notes=standard_notes("spair", extractor),
        config=extractor.config.to_dict(),
        seconds=time.perf_counter() - start,
    )
