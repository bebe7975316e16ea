"""Match pictures: files are real PNGs of the expected size, inputs are checked, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib")

from dift_fast.viz import plot_matches, plot_points


def gradient(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)


def test_plot_matches_writes_png_with_both_images(tmp_path):
    a, b = gradient(160, 120), gradient(100, 140)
    pts0 = torch.tensor([[10, 20], [150, 110], [80, 60]])
    pts1 = [[5, 5], [90, 130], [50, 70]]
    out = plot_matches(Image.fromarray(a), b, pts0, pts1, tmp_path / "sub" / "m.png", scores=[0.9, 0.5, 0.1],
                       heatmap=torch.rand(7, 5), title="pair")
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert w >= 160 + 100 and h >= 140  # side by side at native resolution
    assert px.std() > 10  # not blank
    assert not list(out.parent.glob(".*tmp*"))


def test_plot_points_accepts_model_tensors(tmp_path):
    img = torch.rand(3, 48, 64) * 2 - 1  # the model's [-1, 1] layout
    out = plot_points(img, np.array([[3.5, 4.0], [60, 40]]), tmp_path / "p.png", scores=[1.0, 0.2])
    with Image.open(out) as im:
        assert im.size[0] >= 64 and im.size[1] >= 48


def test_plot_matches_bad_inputs_write_nothing(tmp_path):
    a = gradient(32, 32)
    out = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="pair up"):
        plot_matches(a, a, [[1, 1], [2, 2]], [[1, 1]], out)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot_matches(a, a, [1, 2, 3], [1, 2, 3], out)
    with pytest.raises(ValueError, match="heatmap"):
        plot_matches(a, a, [[1, 1]], [[1, 1]], out, heatmap=torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="RGB image"):
        plot_points(np.zeros((4, 4, 5)), [[1, 1]], out)
    assert not any(tmp_path.iterdir())
