"""DAVIS-2017 (semi-supervised, 480p) videos from the official release layout.

    DAVIS/
      ImageSets/2017/val.txt               one video name per line
      JPEGImages/480p/<video>/00000.jpg ...
      Annotations/480p/<video>/00000.png ...   palette PNGs: index 0 background, 1..K objects (255 void)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DavisVideo", "frame_size_rule", "load_davis", "read_label_png"]


@dataclass
class DavisVideo:
    name: str
    frames: list[Path]  # sorted JPEGs
    annotations: list[Path]  # sorted PNGs (one per frame for val)

    @property
    def first_annotation(self) -> Path:
        return self.annotations[0]


def load_davis(root: str | Path, split: str = "val", resolution: str = "480p",
               limit: int | None = None) -> list[DavisVideo]:
    """The videos of ``ImageSets/2017/<split>.txt`` in list order (the first ``limit`` when given)."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"DAVIS: {listing} not found; --root must contain ImageSets/2017/{split}.txt")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if limit is not None:
        names = names[:limit]
    videos = []
    for name in names:
        frames = sorted((root / "JPEGImages" / resolution / name).glob("*.jpg"))
        annotations = sorted((root / "Annotations" / resolution / name).glob("*.png"))
        if not frames:
            raise FileNotFoundError(f"DAVIS: no frames in {root / 'JPEGImages' / resolution / name}")
        if not annotations or annotations[0].stem != frames[0].stem:
            raise FileNotFoundError(f"DAVIS: video {name} has no annotation for its first frame {frames[0].name}")
        videos.append(DavisVideo(name, frames, annotations))
    return videos


def read_label_png(path: str | Path) -> tuple[np.ndarray, list[int] | None]:
    """Label map [H, W] uint8 of a palette PNG (its indices, not its colours) and its palette."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"DAVIS: {path} is a {img.mode} image; annotations are palette (P) PNGs")
        return np.array(img), img.getpalette()


def frame_size_rule(width: int, height: int, short_side: int = 480, multiple: int = 32) -> tuple[int, int]:
    """(W, H) a frame is resized to: short side ``short_side``, long side scaled and floored to ``multiple``."""
    if height > width:
        tw = short_side
        th = int((short_side * height / width) // multiple * multiple)
    else:
        th = short_side
        tw = int((short_side * width / height) // multiple * multiple)
    return tw, th
