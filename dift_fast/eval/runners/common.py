"""Pieces every benchmark runner shares: image items for the feature cache, point clamping, standard notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...images import prepare_image
from ...noise import image_key
from ..features import ImageItem, file_identity
from ..report import RANDOM_WEIGHTS_NOTE, protocol_differences

__all__ = ["array_item", "clamp_points", "compute_device", "file_item", "image_size_of", "standard_notes"]


def file_item(path: Path, image_size: tuple[int, int] | None, prompt: str = "") -> ImageItem:
    """A cache item for an image file, resized by the extractor's rule (PIL bicubic to ``image_size``)."""
    return ImageItem(
        ident=file_identity(path, prompt),
        name=str(path),
        load=lambda: prepare_image(path, image_size, name=str(path)),
        prompt=prompt,
    )


def array_item(name: str, pixels: np.ndarray, image_size: tuple[int, int] | None, prompt: str = "") -> ImageItem:
    """A cache item for an in-memory uint8 image, identified by its pixels."""
    return ImageItem(
        ident=json.dumps(["pixels", image_key(pixels), prompt]),
        name=name,
        load=lambda: prepare_image(pixels, image_size, name=name),
        prompt=prompt,
    )


def image_size_of(path: Path) -> tuple[int, int]:
    """(W, H) of an image file (reads the header only)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def clamp_points(points: np.ndarray, size: tuple[int, int]) -> torch.Tensor:  # [N, 2] long
    """Round (x, y) points to pixels and clamp them into a ``size`` (W, H) image.

    Annotations sometimes sit on or just past the last pixel (x = W after rounding); the reference would index
    out of range there, so such points are moved onto the border instead.
    """
    pts = np.rint(np.asarray(points, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    pts[:, 0] = pts[:, 0].clip(0, size[0] - 1)
    pts[:, 1] = pts[:, 1].clip(0, size[1] - 1)
    return torch.from_numpy(pts)


def standard_notes(benchmark: str, extractor: Any) -> list[str]:
    notes = []
    if extractor.is_tiny:
        notes.append(RANDOM_WEIGHTS_NOTE)
    diffs = protocol_differences(benchmark, extractor.config)
    if diffs:
        notes.append("settings differ from the paper's protocol: " + ", ".join(diffs))
    return notes


def compute_device(extractor: Any) -> torch.device:
    """Where matching and propagation run: the extractor's device."""
    return torch.device(extractor.device)
