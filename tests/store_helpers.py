"""Shared by the store tests: small image trees and store comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dift_fast.store import FeatureStore


def make_images(folder: Path, n: int = 8, bad: bool = True, seed: int = 0) -> Path:
    """``n`` small random images in a two-level tree (sizes vary: resizing is exercised), plus two bad files."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (40 + i, 50 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    if bad:
        (folder / "b" / "text.png").write_text("this is not a png")
        good = folder / "a" / "img01.png"
        (folder / "a" / "truncated.png").write_bytes(good.read_bytes()[:200])
    return folder


def assert_stores_equal(a: FeatureStore | Path, b: FeatureStore | Path) -> None:
    """Same identity, same images with bit-identical features and metadata, same failures."""
    a = a if isinstance(a, FeatureStore) else FeatureStore.open(a)
    b = b if isinstance(b, FeatureStore) else FeatureStore.open(b)
    assert a.meta["identity"] == b.meta["identity"]
    ea, eb = a.entries(), b.entries()
    assert sorted(ea) == sorted(eb)
    for name in ea:
        assert ea[name] == eb[name], name
        fa, fb = a.get(name), b.get(name)
        assert fa.dtype == fb.dtype and fa.shape == fb.shape
        assert torch.equal(fa, fb), f"features of {name} differ"
    assert a.failures() == b.failures()
