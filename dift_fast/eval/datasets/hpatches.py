"""HPatches sequences (the ``hpatches-sequences-release`` layout) and per-image keypoint files.

    hpatches-sequences-release/
      i_ajuntament/1.ppm ... 6.ppm, H_1_2 ... H_1_6      (i_*: illumination, v_*: viewpoint; 116 sequences)

``H_1_k`` is a 3x3 text matrix (``np.loadtxt``) mapping pixels of image 1 to image k.

Keypoints (DIFT used 1,000 SuperPoint keypoints per image) are read from a folder given with ``--keypoints``:
``<seq>-<k>.kp`` (text, ``np.loadtxt``: one keypoint per row, x y first, further columns ignored; the layout of
DIFT's ``superpoint-1k`` folder) or ``<seq>-<k>.npy`` (an [N, >=2] array). Without that folder, keypoints are
detected with OpenCV's SIFT (1,000 strongest): a stand-in, not the paper's protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["HPatchesSequence", "load_hpatches", "load_keypoints"]


@dataclass
class HPatchesSequence:
    name: str
    images: list[Path]  # 1.ppm .. 6.ppm
    homographies: dict[int, np.ndarray]  # k -> H_1_k [3, 3], k = 2..6

    @property
    def kind(self) -> str:
        return "illumination" if self.name.startswith("i_") else "viewpoint"


def load_hpatches(root: str | Path, limit: int | None = None) -> list[HPatchesSequence]:
    """The sequences under ``root`` in name order (the first ``limit`` when given)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches: {root} is not a folder")
    seq_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name[:2] in ("i_", "v_"))
    if not seq_dirs:
        raise FileNotFoundError(f"HPatches: no i_*/v_* sequence folders in {root}")
    if limit is not None:
        seq_dirs = seq_dirs[:limit]
    out = []
    for d in seq_dirs:
        images = [d / f"{k}.ppm" for k in range(1, 7)]
        missing = [p.name for p in images if not p.is_file()]
        missing += [f"H_1_{k}" for k in range(2, 7) if not (d / f"H_1_{k}").is_file()]
        if missing:
            raise FileNotFoundError(f"HPatches: sequence {d.name} lacks {missing}")
        homs = {}
        for k in range(2, 7):
            H = np.loadtxt(d / f"H_1_{k}", dtype=np.float64)
            if H.shape != (3, 3):
                raise ValueError(f"HPatches: {d.name}/H_1_{k} is {H.shape}, expected a 3x3 matrix")
            homs[k] = H
        out.append(HPatchesSequence(d.name, images, homs))
    return out


def load_keypoints(folder: str | Path, sequence: str, index: int) -> np.ndarray:
    """Keypoints [N, 2] (x, y) float32 of image ``index`` of ``sequence`` from ``<seq>-<k>.kp`` or ``.npy``."""
    folder = Path(folder)
    for path in (folder / f"{sequence}-{index}.kp", folder / f"{sequence}-{index}.npy"):
        if path.is_file():
            arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
            arr = np.asarray(arr, dtype=np.float32)
            if arr.size == 0:
                return arr.reshape(0, 2)
            if arr.ndim != 2 or arr.shape[1] < 2:
                raise ValueError(f"HPatches keypoints {path}: expected [N, >=2] (x, y, ...), got {arr.shape}")
            return np.ascontiguousarray(arr[:, :2])
    raise FileNotFoundError(f"HPatches: no keypoint file {sequence}-{index}.kp or .npy in {folder}")
