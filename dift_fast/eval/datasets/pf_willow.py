"""PF-WILLOW test pairs (900) from ``test_pairs.csv`` in the layout used by HPF, CATs and most later work.

    PF-WILLOW/
      test_pairs.csv
      car(G)/car_001.png ...   (10 classes: car(G), car(M), car(S), duck(S), motorbike(G), motorbike(M),
                                motorbike(S), winebottle(M), winebottle(wC), winebottle(woC))

``test_pairs.csv`` has a header row and one pair per row: ``imageA,imageB`` (paths such as
``PF-WILLOW/car(G)/car_001.png``), then 40 numbers: the 10 x then the 10 y coordinates of the source keypoints,
then the 10 x and the 10 y of the target keypoints. Image paths are resolved against ``--root`` as written, then
without their first component (the dataset folder's own name).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["WillowPair", "load_pf_willow_pairs", "willow_category"]

N_KPS = 10


@dataclass
class WillowPair:
    name: str
    category: str  # the class folder, e.g. "car(G)"
    src_path: Path
    trg_path: Path
    src_kps: np.ndarray  # [10, 2] (x, y)
    trg_kps: np.ndarray  # [10, 2]


def willow_category(folder: str) -> str:
    """The object word of a class folder: ``"winebottle(wC)" -> "winebottle"`` (used in the prompt)."""
    return re.sub(r"\(.*\)$", "", folder).strip()


def _resolve(root: Path, rel: str) -> Path:
    parts = Path(rel.strip()).parts
    for candidate in (root.joinpath(*parts), root.joinpath(*parts[1:]) if len(parts) > 1 else None):
        if candidate is not None and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"PF-WILLOW: image {rel!r} not found under {root} (tried it with and without "
                            f"its first folder)")


def load_pf_willow_pairs(root: str | Path, limit: int | None = None) -> list[WillowPair]:
    """The pairs of ``test_pairs.csv`` in file order (the first ``limit`` when given)."""
    root = Path(root)
    csv_path = root / "test_pairs.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"PF-WILLOW: {csv_path} not found; --root must contain test_pairs.csv")
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"PF-WILLOW: {csv_path} is empty")
    body = rows[1:]  # the first row is the header (imageA,imageB,XA1,...)
    if limit is not None:
        body = body[:limit]
    pairs = []
    for i, row in enumerate(body, start=2):
        if not row:
            continue
        if len(row) != 2 + 4 * N_KPS:
            raise ValueError(f"PF-WILLOW: {csv_path.name} line {i} has {len(row)} fields, expected {2 + 4 * N_KPS}")
        nums = np.asarray([float(v) for v in row[2:]], dtype=np.float64)
        src = nums[: 2 * N_KPS].reshape(2, N_KPS).T
        trg = nums[2 * N_KPS :].reshape(2, N_KPS).T
        src_path, trg_path = _resolve(root, row[0]), _resolve(root, row[1])
        pairs.append(WillowPair(
            name=f"{src_path.parent.name}/{src_path.stem}-{trg_path.stem}",
            category=src_path.parent.name,
            src_path=src_path,
            trg_path=trg_path,
            src_kps=src,
            trg_kps=trg,
        ))
    return pairs
