"""Match pictures: Figures for notebooks, PNGs of the expected size, readable with many matches, inputs checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib")

from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure

from dift_fast.viz import (
    AUTO_LABEL_LIMIT,
    RANDOM_WEIGHTS_WATERMARK,
    plot_heatmaps,
    plot_matches,
    plot_points,
)


def gradient(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)


def test_plot_matches_writes_png_with_both_images(tmp_path):
    a, b = gradient(160, 120), gradient(100, 140)
    pts0 = torch.tensor([[10, 20], [150, 110], [80, 60]])
    pts1 = [[5, 5], [90, 130], [50, 70]]
    out = tmp_path / "sub" / "m.png"
    fig = plot_matches(
        Image.fromarray(a), b, pts0, pts1, out, scores=[0.9, 0.5, 0.1], heatmap=torch.rand(7, 5), title="pair"
    )
    assert isinstance(fig, Figure)
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert w >= 160 + 100 and h >= 140  # side by side at native resolution
    assert px.std() > 10  # not blank
    assert not list(out.parent.glob(".*tmp*"))


def test_plot_points_accepts_model_tensors(tmp_path):
    img = torch.rand(3, 48, 64) * 2 - 1  # the model's [-1, 1] layout
    out = tmp_path / "p.png"
    plot_points(img, np.array([[3.5, 4.0], [60, 40]]), out, scores=[1.0, 0.2])
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


def texts(fig, gid: str) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: a.get_gid() == gid)]


def test_300_matches_stay_readable(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    pts0 = np.c_[rng.uniform(0, 319, n), rng.uniform(0, 239, n)]
    pts1 = np.c_[rng.uniform(0, 279, n), rng.uniform(0, 209, n)]
    scores = rng.uniform(0.2, 0.9, n)
    scores[17] = 0.99
    out = tmp_path / "m300.png"
    fig = plot_matches(
        gradient(320, 240),
        gradient(280, 210),
        pts0,
        pts1,
        out,
        scores=scores,
        color_by="score",
        names=("left.jpg", "right.jpg"),
        watermark=True,
    )
    ax = fig.axes[0]
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1 and len(lines[0].get_segments()) == n  # one artist, one segment per match
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in points] == [n, n]
    assert all(c.get_sizes()[0] < 10 for c in points)  # small markers at this density
    assert texts(fig, "point-label") == []  # numbers hidden beyond AUTO_LABEL_LIMIT
    assert texts(fig, "image-name") == ["left.jpg", "right.jpg"]
    assert texts(fig, "watermark") == [RANDOM_WEIGHTS_WATERMARK]
    assert "300 matches, score median" in texts(fig, "scores")[0]
    # coloured by score: the best match gets the top of the colour map, and a colour bar says so
    from matplotlib import colormaps

    assert np.allclose(points[0].get_facecolors()[17], colormaps["viridis"](1.0))
    assert any(a.get_ylabel() == "score" for a in fig.axes[1:])
    with Image.open(out) as im:
        assert im.size[0] >= 320 + 280 and np.asarray(im.convert("RGB")).std() > 10


def test_labels_can_be_forced_or_hidden():
    a = gradient(64, 48)
    few = [[5, 5], [20, 30], [40, 10]]
    assert texts(plot_matches(a, a, few, few), "point-label") == ["1", "2", "3"] * 2
    assert texts(plot_matches(a, a, few, few, labels=False), "point-label") == []
    many = np.tile([[10.0, 10.0]], (AUTO_LABEL_LIMIT + 1, 1))
    assert len(texts(plot_points(a, many, labels=True), "point-label")) == AUTO_LABEL_LIMIT + 1


def test_heatmap_says_which_point_it_shows(tmp_path):
    a, b = gradient(80, 60), gradient(70, 50)
    pts0, pts1 = [[5, 5], [20, 30], [41, 12]], [[6, 6], [21, 31], [42, 13]]
    fig = plot_matches(a, b, pts0, pts1, heatmap=torch.rand(3, 6, 7), heatmap_point=2, names=("a.png", "b.png"))
    assert texts(fig, "image-name") == ["a.png", "b.png: similarity to point 3 (41, 12)"]
    rings = fig.findobj(lambda x: x.get_gid() == "heatmap-point")
    assert [tuple(r.get_offsets()[0]) for r in rings] == [(41.0, 12.0), (42.0 + 80 + 8, 13.0)]  # both images
    assert any(ax.get_ylabel() == "similarity" for ax in fig.axes[1:])
    one = plot_points(a, pts0, heatmap=torch.rand(6, 8), heatmap_point=0)
    assert texts(one, "image-name") == ["similarity to point 1 (5, 5)"]
    assert not any(tmp_path.iterdir())  # no out_path: nothing written
    with pytest.raises(ValueError, match="one map per point: 2 maps for 3 points"):
        plot_matches(a, b, pts0, pts1, heatmap=torch.rand(2, 6, 7))
    with pytest.raises(ValueError, match="heatmap_point 3 is not one of the 3 points"):
        plot_matches(a, b, pts0, pts1, heatmap=torch.rand(6, 7), heatmap_point=3)
    with pytest.raises(ValueError, match="needs heatmap_point"):
        plot_points(a, pts0, heatmap=torch.rand(3, 6, 7))


def test_plot_heatmaps_shows_each_point(tmp_path):
    a, b = gradient(80, 60), gradient(70, 50)
    pts0 = [[5, 5], [20, 30], [41, 12], [60, 50], [70, 2]]
    fig = plot_heatmaps(
        a,
        b,
        pts0,
        torch.rand(5, 6, 7),
        pts1=[[1, 1]] * 5,
        out_path=tmp_path / "h.png",
        names=("a.png", "b.png"),
        watermark="not real",
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "points",
        "point 1 (5, 5)",
        "point 2 (20, 30)",
        "point 3 (41, 12)",
        "point 4 (60, 50)",
        "point 5 (70, 2)",
    ]
    assert "a.png" in fig.get_suptitle() and "b.png" in fig.get_suptitle()
    assert texts(fig, "watermark") == ["not real"]
    assert (tmp_path / "h.png").is_file()
    with pytest.raises(ValueError, match=r"heatmaps must be \[N, h, w\] with N = 5"):
        plot_heatmaps(a, b, pts0, torch.rand(4, 6, 7))
    with pytest.raises(ValueError, match=r"draws 1\.\.24 points"):
        plot_heatmaps(a, b, np.zeros((25, 2)), torch.rand(25, 6, 7))


def test_color_by_score_needs_scores():
    a = gradient(32, 32)
    with pytest.raises(ValueError, match="needs scores"):
        plot_matches(a, a, [[1, 1]], [[1, 1]], color_by="score")
    with pytest.raises(ValueError, match="color_by must be"):
        plot_points(a, [[1, 1]], color_by="size")
