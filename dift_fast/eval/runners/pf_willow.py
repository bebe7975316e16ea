"""PF-WILLOW: point transfer scored with PCK@0.05 and PCK@0.10 of the target keypoints' bounding box.

The paper did not publish its PF-WILLOW protocol; this follows the common one (HPF and later work): the
threshold is ``max`` side of the box around the target keypoints, and the prompt names the object class.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..datasets.pf_willow import load_pf_willow_pairs, willow_category
from ..features import FeatureCache, ensure_features
from ..metrics.pck import PckAccumulator, correct_keypoints, keypoint_bbox_threshold
from ..report import Report
from .common import clamp_points, compute_device, file_item, image_size_of, standard_notes

__all__ = ["run_pf_willow"]

ALPHAS = (0.05, 0.10)


def run_pf_willow(
    extractor: Any,
    root: str | Path,
    cache: FeatureCache,
    *,
    limit: int | None = None,
    prompt: str = "a photo of a {category}",
    progress: bool = True,
) -> Report:
    """Evaluate the PF-WILLOW test pairs (or the first ``limit``)."""
    from tqdm.auto import tqdm

    from ...matching import match_points

    start = time.perf_counter()
    pairs = load_pf_willow_pairs(root, limit=limit)
    size = extractor.config.image_size
    items = {}
    for p in pairs:
        text = prompt.format(category=willow_category(p.category))
        items[p.name] = (file_item(p.src_path, size, text), file_item(p.trg_path, size, text))
    computed = ensure_features(extractor, [it for pair in items.values() for it in pair], cache,
                               progress=progress, desc="pf-willow features")
    device = compute_device(extractor)
    accs = {a: PckAccumulator() for a in ALPHAS}
    for p in tqdm(pairs, desc="pf-willow pairs", unit="pair", disable=not progress):
        src_item, trg_item = items[p.name]
        src_size, trg_size = image_size_of(p.src_path), image_size_of(p.trg_path)
        pred, _ = match_points(cache.get(src_item.ident).to(device), cache.get(trg_item.ident).to(device),
                               clamp_points(p.src_kps, src_size), src_size, trg_size)
        thr = keypoint_bbox_threshold(p.trg_kps)
        for a, acc in accs.items():
            acc.add(p.category, correct_keypoints(pred.cpu().numpy(), p.trg_kps, thr, a))
    metrics, details = {}, {}
    for a, acc in accs.items():
        o = acc.overall()
        metrics[f"PCK@{a:.2f} per image"] = o["per_image"]
        metrics[f"PCK@{a:.2f} per point"] = o["per_point"]
        details[f"per category, PCK@{a:.2f}"] = acc.per_category()
    return Report(
        benchmark="pf-willow",
        metrics=metrics,
        details=details,
        counts={"pairs": len(pairs), "images extracted": computed},
        notes=standard_notes("pf-willow", extractor),
        config=extractor.config.to_dict(),
        seconds=time.perf_counter() - start,
    )
