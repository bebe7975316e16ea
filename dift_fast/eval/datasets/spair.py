"""SPair-71k test pairs from the official release layout.

    SPair-71k/
      JPEGImages/<category>/<name>.jpg
      PairAnnotation/test/<pair_id>-<src>-<trg>:<category>.json

Each pair file is one JSON object; the keys used here are ``src_imname``, ``trg_imname``, ``category``,
``src_imsize``/``trg_imsize`` ([width, height, channels]), ``src_kps``/``trg_kps`` ([[x, y], ...], integer pixels,
only keypoints visible in both images) and ``trg_bndbox`` ([x1, y1, x2, y2]). Other keys (``pair_id``,
``kps_ids``, ``viewpoint_variation``...) are kept in ``extra``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SpairPair", "load_spair_pairs"]

_REQUIRED = ("src_imname", "trg_imname", "category", "src_imsize", "trg_imsize", "src_kps", "trg_kps", "trg_bndbox")


@dataclass
class SpairPair:
    name: str  # annotation file stem, e.g. "000001-2008_002719-2008_004100:aeroplane"
    category: str
    src_path: Path
    trg_path: Path
    src_size: tuple[int, int]  # (W, H)
    trg_size: tuple[int, int]
    src_kps: np.ndarray  # [N, 2] (x, y)
    trg_kps: np.ndarray  # [N, 2]
    src_bndbox: list[float] | None
    trg_bndbox: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


def _points(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value if value is not None else [], dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{where}: keypoints must be [[x, y], ...], got an array of shape {arr.shape}")
    return arr


def load_spair_pairs(root: str | Path, split: str = "test", limit: int | None = None) -> list[SpairPair]:
    """The pairs of ``split`` in file-name order (the first ``limit`` when given)."""
    root = Path(root)
    ann_dir = root / "PairAnnotation" / split
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"SPair-71k: {ann_dir} not found; --root must contain PairAnnotation/{split}/")
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"SPair-71k: no *.json pair annotations in {ann_dir}")
    if limit is not None:
        files = files[:limit]
    pairs = []
    for f in files:
        data = json.loads(f.read_text())
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"SPair-71k: {f.name} lacks {missing}; is this a PairAnnotation file?")
        cat = data["category"]
        src_kps, trg_kps = _points(data["src_kps"], f.name), _points(data["trg_kps"], f.name)
        if len(src_kps) != len(trg_kps):
            raise ValueError(f"SPair-71k: {f.name} has {len(src_kps)} source but {len(trg_kps)} target keypoints")
        pairs.append(SpairPair(
            name=f.stem,
            category=cat,
            src_path=root / "JPEGImages" / cat / data["src_imname"],
            trg_path=root / "JPEGImages" / cat / data["trg_imname"],
            src_size=(int(data["src_imsize"][0]), int(data["src_imsize"][1])),
            trg_size=(int(data["trg_imsize"][0]), int(data["trg_imsize"][1])),
            src_kps=src_kps,
            trg_kps=trg_kps,
            src_bndbox=data.get("src_bndbox"),
            trg_bndbox=list(data["trg_bndbox"]),
            extra={k: v for k, v in data.items() if k not in _REQUIRED and k != "src_bndbox"},
        ))
    return pairs
