"""JHMDB videos with their 15 puppet joints, from the official release layout.

    JHMDB/
      Rename_Images/<action>/<video>/00001.png ...        the frames
      joint_positions/<action>/<video>/joint_positions.mat  ``pos_img``: [2, 15, T] (x, y), 1-based (MATLAB)
      splits/<action>_test_split<k>.txt                     official splits: "<video>.avi 1|2" (2: test)
      testlist_split1.txt                                   the video-correspondence papers' list (CRW, UVC):
                                                            "<frames folder> <joint_positions.mat>" per line

The list of the video-correspondence papers holds absolute paths of the machine it was written on; each path is
re-rooted under ``root`` from its ``Rename_Images`` / ``joint_positions`` component, and the two columns are told
apart by the ``.mat`` suffix (UVC's copy has them in the other order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["JHMDB_JOINTS", "JhmdbVideo", "load_jhmdb", "read_joints"]

# The order of pos_img's 15 joints (JHMDB's puppet model).
JHMDB_JOINTS = (
    "neck", "belly", "face", "right shoulder", "left shoulder", "right hip", "left hip", "right elbow",
    "left elbow", "right knee", "left knee", "right wrist", "left wrist", "right ankle", "left ankle",
)  # fmt: skip

FRAMES_DIR = "Rename_Images"
JOINTS_DIR = "joint_positions"
DEFAULT_LIST = "testlist_split1.txt"


@dataclass
class JhmdbVideo:
    name: str  # "<action>/<video>"
    frames: list[Path]  # in frame order
    joints_file: Path  # joint_positions.mat


def load_jhmdb(root: str | Path, split: str | Path | None = None, limit: int | None = None) -> list[JhmdbVideo]:
    """The videos of a split, in list order (the first ``limit`` when given).

    Args:
        root: the JHMDB folder (``Rename_Images/`` and ``joint_positions/`` inside).
        split: a list file as the video-correspondence papers use (two paths per line), or ``"1"``, ``"2"``,
            ``"3"`` for the test videos of an official split (``splits/*_test_split<k>.txt``). Default:
            ``root/testlist_split1.txt`` if it exists, else official split 1.
        limit: only the first ``limit`` videos.
    """
    root = Path(root)
    if split is None:
        split = root / DEFAULT_LIST if (root / DEFAULT_LIST).is_file() else "1"
    if str(split) in ("1", "2", "3"):
        pairs = _official_split(root, int(str(split)))
    else:
        pairs = _pair_list(root, Path(split))
    if limit is not None:
        pairs = pairs[:limit]
    videos = []
    for where, frames_dir, joints_file in pairs:
        if not frames_dir.is_dir():
            raise FileNotFoundError(f"JHMDB: {where}: frames folder {frames_dir} not found")
        if not joints_file.is_file():
            raise FileNotFoundError(f"JHMDB: {where}: joints file {joints_file} not found")
        frames = _sorted_frames(frames_dir)
        if not frames:
            raise FileNotFoundError(f"JHMDB: {where}: no .png/.jpg frames in {frames_dir}")
        videos.append(JhmdbVideo(f"{frames_dir.parent.name}/{frames_dir.name}", frames, joints_file))
    return videos


def read_joints(path: str | Path) -> np.ndarray:  # [T, J, 2] float64, 0-based pixels
    """``pos_img`` of a ``joint_positions.mat`` as [T, J, 2] (x, y) 0-based pixel coordinates (MATLAB's - 1)."""
    from ...extras import import_extra

    loadmat = import_extra("scipy.io", "reading JHMDB").loadmat
    try:
        data = loadmat(str(path))
    except Exception as err:  # scipy raises ValueError, TypeError, OSError ... on a damaged file
        raise ValueError(f"JHMDB: cannot read {path} as a MATLAB file ({type(err).__name__}: {err})") from None
    if "pos_img" not in data:
        raise ValueError(f"JHMDB: {path} has no 'pos_img' (keys: {sorted(k for k in data if not k.startswith('__'))})")
    pos = np.asarray(data["pos_img"])
    if pos.ndim != 3 or pos.shape[0] != 2 or 0 in pos.shape or not np.issubdtype(pos.dtype, np.number):
        raise ValueError(f"JHMDB: {path}: pos_img must be a numeric [2, joints, frames] array, got "
                         f"{pos.dtype} {list(pos.shape)}")
    pos = pos.astype(np.float64) - 1.0
    if not np.isfinite(pos).all():
        raise ValueError(f"JHMDB: {path}: pos_img contains NaN or Inf")
    return pos.transpose(2, 1, 0).copy()


def _sorted_frames(folder: Path) -> list[Path]:
    frames = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file()]
    return sorted(frames, key=lambda p: (int(p.stem), p.name) if p.stem.isdigit() else (1 << 62, p.name))


def _reroot(root: Path, text: str, anchor: str) -> Path:
    """``text`` as a path under ``root``: from its last ``anchor`` component on, or relative to ``root``."""
    path = Path(text)
    parts = path.parts
    if anchor in parts:
        i = len(parts) - 1 - parts[::-1].index(anchor)
        return root.joinpath(*parts[i:])
    return path if path.is_absolute() else root / path


def _pair_list(root: Path, listing: Path) -> list[tuple[str, Path, Path]]:
    if not listing.is_file():
        raise FileNotFoundError(
            f"JHMDB: split list {listing} not found; pass a list of '<frames folder> <joint_positions.mat>' lines "
            f"(CRW's testlist_split1.txt), or 1, 2 or 3 for an official split (needs {root / 'splits'})"
        )
    out = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{listing.name} line {n}"
        mats = [t for t in tokens if t.lower().endswith(".mat")]
        dirs = [t for t in tokens if not t.lower().endswith(".mat")]
        if len(tokens) == 2 and len(mats) == 1:
            frames_dir = _reroot(root, dirs[0], FRAMES_DIR)
            joints = _reroot(root, mats[0], JOINTS_DIR)
        elif len(tokens) == 1 and not mats:  # "<action>/<video>"
            rel = Path(tokens[0])
            frames_dir = root / FRAMES_DIR / rel
            joints = root / JOINTS_DIR / rel / "joint_positions.mat"
        else:
            raise ValueError(f"JHMDB: {where}: expected '<frames folder> <joint_positions.mat>' or "
                             f"'<action>/<video>', got {line.strip()!r}")
        out.append((where, frames_dir, joints))
    if not out:
        raise ValueError(f"JHMDB: split list {listing} lists no videos")
    return out


def _official_split(root: Path, k: int) -> list[tuple[str, Path, Path]]:
    files = sorted((root / "splits").glob(f"*_test_split{k}.txt"))
    if not files:
        raise FileNotFoundError(
            f"JHMDB: no {root / 'splits'}/<action>_test_split{k}.txt files and no {root / DEFAULT_LIST}; "
            f"pass --split with a list of '<frames folder> <joint_positions.mat>' lines"
        )
    out = []
    for f in files:
        action = re.sub(rf"_test_split{k}$", "", f.stem)
        for n, line in enumerate(f.read_text().splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
                raise ValueError(f"JHMDB: {f.name} line {n}: expected '<video>.avi 1|2', got {line.strip()!r}")
            if tokens[1] != "2":  # 1: training, 2: test (0: unused)
                continue
            video = Path(tokens[0]).stem
            out.append((f"{f.name} line {n}", root / FRAMES_DIR / action / video,
                        root / JOINTS_DIR / action / video / "joint_positions.mat"))
    if not out:
        raise ValueError(f"JHMDB: official split {k} under {root / 'splits'} has no test videos")
    return out
