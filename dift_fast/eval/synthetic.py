"""Synthetic homography pairs from real photographs that ship with scikit-image (or a folder of your own).

Each pair is a photo and a copy of it changed by a known transformation, in the spirit of HPatches:
``v_*`` (viewpoint) pairs warp the photo by a random homography (each corner moved by up to ``max_shift`` of
the image size) with a mild photometric change; ``i_*`` (illumination) pairs keep the geometry (identity
homography) and change gain, bias, gamma and noise strongly. Everything is drawn from one seeded generator, so
the pairs are the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SAMPLE_PHOTOS",
    "SyntheticPair",
    "grid_points",
    "load_photos",
    "make_pairs",
    "photometric",
    "random_homography",
]

# scikit-image sample photographs bundled with the package (no download needed).
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "coins",
                 "hubble_deep_field")
_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")


@dataclass
class SyntheticPair:
    name: str  # "v_coffee_3" / "i_camera_4"
    image0: np.ndarray  # [H, W, 3] uint8
    image1: np.ndarray  # [H, W, 3] uint8
    H: np.ndarray  # [3, 3] float64, pixels of image0 -> image1


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def load_photos(folder: str | Path | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB) photos: scikit-image's sample photos, or every image file in ``folder``."""
    if folder is None:
        from skimage import data

        return [(name, _rgb(getattr(data, name)())) for name in SAMPLE_PHOTOS if hasattr(data, name)]
    from ..images import load_rgb

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"synthetic-homography: no images ({', '.join(_PHOTO_SUFFIXES)}) in {folder}")
    return [(p.stem, np.asarray(load_rgb(p))) for p in files]


def random_homography(rng: np.random.Generator, size: tuple[int, int], max_shift: float = 0.15) -> np.ndarray:
    """A homography moving each corner of a ``size`` (W, H) image by up to ``max_shift`` of that size."""
    import cv2

    w, h = size
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    shift = rng.uniform(-max_shift, max_shift, size=(4, 2)) * np.array([w, h])
    dst = (src + shift).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def photometric(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Random gain, bias, gamma and Gaussian noise; ``strength`` in [0, 1] scales their ranges."""
    x = image.astype(np.float64) / 255.0
    gamma = np.exp(rng.uniform(-0.5, 0.5) * strength)
    gain = 1.0 + rng.uniform(-0.5, 0.5) * strength
    bias = rng.uniform(-0.15, 0.15) * strength
    x = np.clip(x, 0, 1) ** gamma * gain + bias
    x = x + rng.normal(0.0, 0.02 * strength, size=x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def make_pairs(
    n_pairs: int,
    seed: int = 0,
    size: tuple[int, int] = (384, 288),
    photos: list[tuple[str, np.ndarray]] | None = None,
    max_shift: float = 0.15,
) -> list[SyntheticPair]:
    """``n_pairs`` pairs, alternating viewpoint and illumination, cycling through ``photos``; all (W, H) = ``size``."""
    import cv2

    photos = photos if photos is not None else load_photos()
    if not photos:
        raise ValueError("synthetic-homography: no photos to build pairs from")
    rng = np.random.default_rng(seed)
    w, h = size
    pairs = []
    for i in range(n_pairs):
        name, photo = photos[(i // 2) % len(photos)]
        base = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        if i % 2 == 0:
            H = random_homography(rng, size, max_shift)
            warped = cv2.warpPerspective(base, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            pairs.append(SyntheticPair(f"v_{name}_{i}", base, photometric(rng, warped, 0.3), H))
        else:
            pairs.append(SyntheticPair(f"i_{name}_{i}", base, photometric(rng, base, 1.0), np.eye(3)))
    return pairs


def grid_points(H: np.ndarray, size0: tuple[int, int], size1: tuple[int, int], n: int = 8,
                margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """An ``n`` x ``n`` grid of integer pixels in image 0 and their images under ``H``, kept where inside image 1.

    Returns ``(points0 [M, 2] int64, points1 [M, 2] float64)``.
    """
    w0, h0 = size0
    w1, h1 = size1
    xs = np.round(np.linspace(margin * (w0 - 1), (1 - margin) * (w0 - 1), n)).astype(np.int64)
    ys = np.round(np.linspace(margin * (h0 - 1), (1 - margin) * (h0 - 1), n)).astype(np.int64)
    p0 = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    homog = np.concatenate([p0.astype(np.float64), np.ones((len(p0), 1))], axis=1) @ np.asarray(H).T
    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = homog[:, :2] / homog[:, 2:]
    inside = np.isfinite(p1).all(axis=1) & (p1[:, 0] >= 0) & (p1[:, 0] <= w1 - 1) & (p1[:, 1] >= 0) & (
        p1[:, 1] <= h1 - 1
    )
    return p0[inside], p1[inside]
