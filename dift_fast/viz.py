"""Pictures of correspondences: two images side by side with points, lines, scores and similarity heat maps.

Every function returns a matplotlib ``Figure`` (in a notebook: ``display(fig)``, or leave it as the cell's last
expression with the inline backend) and, given ``out_path``, also writes it as a PNG atomically. matplotlib is
imported on first use (``pip install dift-fast[viz]``) with the Agg canvas, without touching pyplot's global state.

Readable at any number of matches: up to ``AUTO_LABEL_LIMIT`` points are numbered, beyond that markers and lines
thin out and labels are hidden (``labels=True`` forces them). Output of a random-weight model should say so:
``watermark=extractor.is_tiny`` stamps :data:`RANDOM_WEIGHTS_WATERMARK` across the picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["AUTO_LABEL_LIMIT", "RANDOM_WEIGHTS_WATERMARK", "plot_heatmaps", "plot_matches", "plot_points"]

ImageLike = Any  # PIL.Image, path, [H, W, 3] uint8/float array, or [3, H, W] tensor in [-1, 1] or [0, 1]

AUTO_LABEL_LIMIT = 40  # with labels=None, points are numbered up to this many
RANDOM_WEIGHTS_WATERMARK = "RANDOM WEIGHTS (tiny-random)\nthese matches are meaningless"
MAX_HEATMAP_PANELS = 24  # plot_heatmaps: one panel per point, up to this many
_MIN_WIDTH_PX = 640  # small images are drawn enlarged so that text stays readable
_NAME_CHARS = 60
_COLORBAR_PX = 95  # room for one colour bar with its ticks and label


def _figure(width_px: float, height_px: float) -> Any:
    from .extras import require_extra

    require_extra("viz", "plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _to_array(img: ImageLike, name: str) -> np.ndarray:  # [H, W, 3] uint8
    if isinstance(img, (str, os.PathLike)):
        from .images import load_rgb

        return np.asarray(load_rgb(img))
    if hasattr(img, "convert") and hasattr(img, "size"):  # PIL image
        return np.asarray(img.convert("RGB"))
    arr = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # [3, H, W] -> [H, W, 3]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{name} must be an RGB image ([H, W, 3] or [3, H, W]), got shape {list(arr.shape)}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if arr.min() < 0:  # the model's [-1, 1] normalisation
            arr = (arr + 1) / 2
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr


def _default_name(img: ImageLike, given: str | None) -> str | None:
    name = given if given is not None else (os.fspath(img) if isinstance(img, (str, os.PathLike)) else None)
    if name is not None and len(name) > _NAME_CHARS:
        name = "…" + name[-(_NAME_CHARS - 1) :]
    return name


def _to_points(points: Any, name: str) -> np.ndarray:  # [N, 2] float
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] (x, y) points, got shape {list(pts.shape)}")
    return pts


def _to_scores(scores: Any, n: int, what: str) -> np.ndarray | None:
    if scores is None:
        return None
    sc = np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64).reshape(-1)
    if len(sc) != n:
        raise ValueError(f"scores has {len(sc)} values for {n} {what}")
    return sc


def _save(fig: Any, out_path: str | os.PathLike) -> Path:
    """Write the PNG atomically (:mod:`dift_fast.atomic`), so a failure leaves no half-written picture."""
    from .atomic import atomic_path

    path = Path(out_path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class _Style:
    """Marker, line and label settings for ``n`` points: bold when few, thin and unlabelled when many."""

    def __init__(self, n: int, labels: bool | None) -> None:
        many = n > AUTO_LABEL_LIMIT
        self.labels = (not many) if labels is None else bool(labels)
        self.marker_size = 36.0 if not many else max(4.0, 36.0 * AUTO_LABEL_LIMIT / n)
        self.line_width = 1.2 if not many else 0.6
        self.line_alpha = 0.9 if not many else 0.55
        self.edge_width = 0.8 if not many else 0.0


def _colours(n: int, scores: np.ndarray | None, color_by: str) -> tuple[np.ndarray, Any]:
    """[n, 4] RGBA per point, and a ScalarMappable for a colour bar (score colouring) or None."""
    from matplotlib import cm, colormaps
    from matplotlib.colors import Normalize

    if color_by == "index":
        return colormaps["hsv"](np.linspace(0, 1, n, endpoint=False) if n else np.zeros(0)), None
    if color_by != "score":
        raise ValueError(f"color_by must be 'index' or 'score', got {color_by!r}")
    if scores is None:
        raise ValueError("color_by='score' needs scores")
    lo, hi = (float(scores.min()), float(scores.max())) if n else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    mappable = cm.ScalarMappable(norm=norm, cmap=colormaps["viridis"])
    return mappable.to_rgba(scores), mappable


class _Canvas:
    """One figure: a band on top for the title and image names, the images at (enlarged) native resolution in one
    axes with pixel data coordinates, and colour bars on the right."""

    def __init__(self, width: int, height: int, *, title: str | None, names: bool, colorbars: int) -> None:
        self.scale = max(1.0, _MIN_WIDTH_PX / width)
        self.top = (28 if title else 0) + (20 if names else 0) + 4
        self.right = _COLORBAR_PX * colorbars
        fw, fh = width * self.scale + self.right, height * self.scale + self.top
        self.fig = _figure(fw, fh)
        self.ax = self.fig.add_axes((0, 0, width * self.scale / fw, height * self.scale / fh))
        self.ax.set_xlim(-0.5, width - 0.5)
        self.ax.set_ylim(height - 0.5, -0.5)
        self.ax.axis("off")
        self._bars = 0
        if title:
            self.fig.suptitle(title, fontsize=11, y=1 - 4 / fh, va="top")

    def name(self, x_centre: float, text: str | None) -> None:
        if text:
            self.ax.text(
                x_centre,
                -0.5,
                text,
                ha="center",
                va="bottom",
                fontsize=9,
                clip_on=False,
                transform=self.ax.transData,
                gid="image-name",
            )

    def colorbar(self, mappable: Any, label: str) -> None:
        x0, y0, w, h = self.ax.get_position().bounds
        px = 1 / self.fig.bbox.width  # one pixel in figure coordinates; each bar has a _COLORBAR_PX-wide slot
        cax = self.fig.add_axes((x0 + w + (10 + _COLORBAR_PX * self._bars) * px, y0 + 0.1 * h, 10 * px, 0.8 * h))
        self.fig.colorbar(mappable, cax=cax, label=label)
        self._bars += 1


def _stamp(fig: Any, watermark: str | bool | None) -> None:
    """Write ``watermark`` (True: :data:`RANDOM_WEIGHTS_WATERMARK`) across the middle of the figure."""
    text = RANDOM_WEIGHTS_WATERMARK if watermark is True else watermark
    if text:
        from matplotlib import patheffects

        fig.text(
            0.5,
            0.5,
            text,
            ha="center",
            va="center",
            rotation=18,
            fontsize=22,
            fontweight="bold",
            color="red",
            alpha=0.6,
            gid="watermark",
            zorder=10,
            path_effects=[patheffects.withStroke(linewidth=3, foreground="white", alpha=0.6)],
        )


def _heatmap_for(heatmap: Any, n: int, point: int, what: str) -> np.ndarray:
    hm = np.asarray(torch.as_tensor(heatmap).detach().float().cpu())
    if hm.ndim == 3:
        if hm.shape[0] != n:
            raise ValueError(f"heatmap [N, h, w] must have one map per point: {hm.shape[0]} maps for {n} points")
        hm = hm[point]
    if hm.ndim != 2:
        raise ValueError(
            f"heatmap must be a [h, w] map over {what} (or [N, h, w], one per point), got shape {list(hm.shape)}"
        )
    return hm


def _draw_heatmap(canvas: _Canvas, hm: np.ndarray, extent: tuple[float, ...]) -> None:
    im = canvas.ax.imshow(hm, cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear")
    canvas.colorbar(im, "similarity")


def _draw_points(canvas: _Canvas, pts: np.ndarray, colours: np.ndarray, style: _Style, dx: float = 0.0) -> None:
    if not len(pts):
        return
    canvas.ax.scatter(
        pts[:, 0] + dx,
        pts[:, 1],
        s=style.marker_size,
        c=colours,
        edgecolors="black",
        linewidths=style.edge_width,
        zorder=3,
    )
    if style.labels:
        for i, (x, y) in enumerate(pts):
            canvas.ax.annotate(
                str(i + 1),
                (x + dx, y),
                xytext=(4, -4),
                textcoords="offset points",
                fontsize=8,
                color="white",
                zorder=4,
                gid="point-label",
                bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.6, "lw": 0},
            )


def _highlight(canvas: _Canvas, xy: Sequence[float], dx: float = 0.0) -> None:
    canvas.ax.scatter(
        [xy[0] + dx],
        [xy[1]],
        s=220,
        facecolors="none",
        edgecolors="white",
        linewidths=2.2,
        zorder=5,
        gid="heatmap-point",
    )


def _score_text(canvas: _Canvas, sc: np.ndarray | None, style: _Style, what: str) -> None:
    if sc is None or not len(sc):
        return
    if style.labels and len(sc) <= 12:
        text = "  ".join(f"{i + 1}: {s:.3f}" for i, s in enumerate(sc))
    else:
        text = f"{len(sc)} {what}, score median {np.median(sc):.3f} (min {sc.min():.3f}, max {sc.max():.3f})"
    canvas.ax.text(
        0.005,
        0.005,
        text,
        transform=canvas.ax.transAxes,
        fontsize=8,
        color="black",
        va="bottom",
        bbox={"fc": "white", "alpha": 0.7, "lw": 0},
        gid="scores",
    )


def _finish(canvas: Any, mappable: Any, watermark: str | bool | None, out_path: str | os.PathLike | None) -> Any:
    """The score colour bar (when points are coloured by score), the watermark, the PNG; returns the Figure."""
    if mappable is not None:
        canvas.colorbar(mappable, "score")
    _stamp(canvas.fig, watermark)
    if out_path is not None:
        _save(canvas.fig, out_path)
    return canvas.fig


def plot_matches(
    img0: ImageLike,
    img1: ImageLike,
    pts0: Any,  # [N, 2] (x, y) in img0
    pts1: Any,  # [N, 2] (x, y) in img1
    out_path: str | os.PathLike | None = None,
    scores: Sequence[float] | Any | None = None,  # [N]
    heatmap: Any | None = None,  # [h, w] or [N, h, w] similarity over img1
    *,
    title: str | None = None,
    names: tuple[str | None, str | None] | None = None,
    labels: bool | None = None,
    color_by: Literal["index", "score"] = "index",
    watermark: str | bool | None = None,
    heatmap_point: int = 0,
) -> Any:
    """Draw img0 and img1 side by side with a line joining each pair of matching points.

    Args:
        img0, img1: PIL images, paths, ``[H, W, 3]`` arrays or ``[3, H, W]`` tensors.
        pts0, pts1: ``[N, 2]`` matching (x, y) pixel coordinates in img0 and img1.
        out_path: also write the figure here as a PNG (atomically).
        scores: optional ``[N]`` similarities: listed (few points) or summarised (many), and used by
            ``color_by="score"``.
        heatmap: optional similarity over img1 (any resolution; stretched to img1): ``[h, w]`` for the point
            ``heatmap_point``, or ``[N, h, w]`` (e.g. :func:`dift_fast.matching.cosine_maps`) of which
            ``heatmap_point``'s is drawn. The caption names the point and it is ringed in both images; to see every
            point's map use :func:`plot_heatmaps`.
        title: figure title.
        names: captions above the two images; default: the paths when the images are given as paths.
        labels: number the points; default: when there are at most ``AUTO_LABEL_LIMIT``.
        color_by: ``"index"`` (a distinct colour per match) or ``"score"`` (viridis by score, with a colour bar).
        watermark: text stamped across the picture; ``True`` for :data:`RANDOM_WEIGHTS_WATERMARK` (pass
            ``extractor.is_tiny``).
        heatmap_point: which point the heat map belongs to (0-based).

    Returns:
        The matplotlib ``Figure``.
    """
    a, b = _to_array(img0, "img0"), _to_array(img1, "img1")
    p0, p1 = _to_points(pts0, "pts0"), _to_points(pts1, "pts1")
    if len(p0) != len(p1):
        raise ValueError(f"pts0 has {len(p0)} points but pts1 has {len(p1)}; they must pair up")
    sc = _to_scores(scores, len(p0), "matches")
    n0, n1 = names if names is not None else (None, None)
    n0, n1 = _default_name(img0, n0), _default_name(img1, n1)
    hm = None
    if heatmap is not None:
        if not 0 <= heatmap_point < max(len(p0), 1):
            raise ValueError(f"heatmap_point {heatmap_point} is not one of the {len(p0)} points")
        hm = _heatmap_for(heatmap, len(p0), heatmap_point, "img1")
    colours, mappable = _colours(len(p0), sc, color_by)
    style = _Style(len(p0), labels)
    (h0, w0), (h1, w1) = a.shape[:2], b.shape[:2]
    gap = max(8, (w0 + w1) // 100)
    canvas_img = np.full((max(h0, h1), w0 + gap + w1, 3), 255, np.uint8)
    canvas_img[:h0, :w0], canvas_img[:h1, w0 + gap :] = a, b
    canvas = _Canvas(
        canvas_img.shape[1],
        canvas_img.shape[0],
        title=title,
        names=bool(n0 or n1 or hm is not None),
        colorbars=(hm is not None) + (mappable is not None),
    )
    ax = canvas.ax
    ax.imshow(canvas_img, interpolation="nearest")
    canvas.name(w0 / 2, n0)
    caption = n1
    if hm is not None:
        _draw_heatmap(canvas, hm, (w0 + gap - 0.5, w0 + gap + w1 - 0.5, h1 - 0.5, -0.5))
        if len(p0):
            x, y = p0[heatmap_point]
            caption = f"{n1 + ': ' if n1 else ''}similarity to point {heatmap_point + 1} ({x:.0f}, {y:.0f})"
            _highlight(canvas, p0[heatmap_point])
            _highlight(canvas, p1[heatmap_point], dx=w0 + gap)
    canvas.name(w0 + gap + w1 / 2, caption)
    if len(p0):
        from matplotlib.collections import LineCollection

        segments = np.stack([p0, p1 + np.array([w0 + gap, 0.0])], axis=1)  # [N, 2 ends, (x, y)]
        line_colours = colours.copy()
        line_colours[:, 3] = style.line_alpha if sc is None else 0.3 + 0.6 * np.clip(sc, 0, 1)
        ax.add_collection(
            LineCollection(segments, colors=line_colours, linewidths=style.line_width, zorder=2, gid="match-lines")
        )
    _draw_points(canvas, p0, colours, style)
    _draw_points(canvas, p1, colours, style, dx=w0 + gap)
    _score_text(canvas, sc, style, "matches")
    return _finish(canvas, mappable, watermark, out_path)


def plot_points(
    img: ImageLike,
    points: Any,  # [N, 2] (x, y)
    out_path: str | os.PathLike | None = None,
    scores: Sequence[float] | Any | None = None,  # [N]
    heatmap: Any | None = None,  # [h, w] or [N, h, w] over img
    *,
    title: str | None = None,
    name: str | None = None,
    labels: bool | None = None,
    color_by: Literal["index", "score"] = "index",
    watermark: str | bool | None = None,
    heatmap_point: int | None = None,
) -> Any:
    """Draw one image with its points (and an optional heat map); arguments as :func:`plot_matches`.

    ``heatmap_point``: the point whose similarity ``heatmap`` shows (ringed and named in the caption); None when
    the heat map is not tied to one of ``points`` (a ``[N, h, w]`` heatmap then needs it).

    Returns:
        The matplotlib ``Figure``.
    """
    a = _to_array(img, "img")
    pts = _to_points(points, "points")
    sc = _to_scores(scores, len(pts), "points")
    label = _default_name(img, name)
    hm = None
    if heatmap is not None:
        if heatmap_point is not None and not 0 <= heatmap_point < len(pts):
            raise ValueError(f"heatmap_point {heatmap_point} is not one of the {len(pts)} points")
        if heatmap_point is None and np.ndim(heatmap) == 3:
            raise ValueError("a [N, h, w] heatmap needs heatmap_point to say which point's map to draw")
        hm = _heatmap_for(heatmap, len(pts), heatmap_point or 0, "img")
    colours, mappable = _colours(len(pts), sc, color_by)
    style = _Style(len(pts), labels)
    h, w = a.shape[:2]
    canvas = _Canvas(
        w, h, title=title, names=bool(label or hm is not None), colorbars=(hm is not None) + (mappable is not None)
    )
    canvas.ax.imshow(a, interpolation="nearest")
    caption = label
    if hm is not None:
        _draw_heatmap(canvas, hm, (-0.5, w - 0.5, h - 0.5, -0.5))
        if heatmap_point is not None:
            x, y = pts[heatmap_point]
            caption = f"{label + ': ' if label else ''}similarity to point {heatmap_point + 1} ({x:.0f}, {y:.0f})"
            _highlight(canvas, pts[heatmap_point])
    canvas.name(w / 2, caption)
    _draw_points(canvas, pts, colours, style)
    _score_text(canvas, sc, style, "points")
    return _finish(canvas, mappable, watermark, out_path)


def plot_heatmaps(
    img0: ImageLike,
    img1: ImageLike,
    pts0: Any,  # [N, 2] (x, y) in img0
    heatmaps: Any,  # [N, h, w] similarity over img1, one per point
    pts1: Any | None = None,  # [N, 2] predicted (x, y) in img1
    out_path: str | os.PathLike | None = None,
    *,
    names: tuple[str | None, str | None] | None = None,
    watermark: str | bool | None = None,
    columns: int = 4,
) -> Any:
    """Show each point's similarity map: img0 with the numbered points, then one panel of img1 per point.

    Args:
        img0, img1: the two images.
        pts0: ``[N, 2]`` query points in img0 (N <= ``MAX_HEATMAP_PANELS``).
        heatmaps: ``[N, h, w]`` similarity of each point over img1 (e.g. ``cosine_maps``), stretched to img1.
        pts1: optional ``[N, 2]`` matches in img1, ringed in their panels.
        out_path: also write a PNG here.
        names: captions for the two images (default: their paths).
        watermark: as :func:`plot_matches`.
        columns: panels per row.

    Returns:
        The matplotlib ``Figure``.
    """
    a, b = _to_array(img0, "img0"), _to_array(img1, "img1")
    p0 = _to_points(pts0, "pts0")
    n = len(p0)
    if not 1 <= n <= MAX_HEATMAP_PANELS:
        raise ValueError(f"plot_heatmaps draws 1..{MAX_HEATMAP_PANELS} points, got {n}; pass fewer points")
    maps = np.asarray(torch.as_tensor(heatmaps).detach().float().cpu())
    if maps.ndim != 3 or maps.shape[0] != n:
        raise ValueError(f"heatmaps must be [N, h, w] with N = {n} (one per point), got shape {list(maps.shape)}")
    p1 = None if pts1 is None else _to_points(pts1, "pts1")
    if p1 is not None and len(p1) != n:
        raise ValueError(f"pts1 has {len(p1)} points for {n} heat maps")
    n0, n1 = names if names is not None else (None, None)
    n0, n1 = _default_name(img0, n0), _default_name(img1, n1)
    columns = max(1, min(columns, n + 1))
    rows = -(-(n + 1) // columns)
    panel_w = 260
    (h0, w0), (h1, w1) = a.shape[:2], b.shape[:2]
    panel_h = panel_w * max(h0 / w0, h1 / w1) + 22
    fig = _figure(panel_w * columns + 90, panel_h * rows + 30)
    fig.suptitle(
        f"similarity of each point of {n0 or 'image 0'} over {n1 or 'image 1'}",
        fontsize=10,
        y=1 - 4 / fig.bbox.height,
        va="top",
    )
    colours = _colours(n, None, "index")[0]
    style = _Style(n, True)
    vmin, vmax = float(maps.min()), float(maps.max())
    image = None
    for k in range(n + 1):
        r, c = divmod(k, columns)
        ax = fig.add_axes(
            (
                c * panel_w / fig.bbox.width,
                1 - ((r + 1) * panel_h + 30) / fig.bbox.height,
                (panel_w - 8) / fig.bbox.width,
                (panel_h - 24) / fig.bbox.height,
            )
        )
        ax.axis("off")
        if k == 0:
            ax.imshow(a, interpolation="nearest")
            ax.scatter(p0[:, 0], p0[:, 1], s=style.marker_size, c=colours, edgecolors="black", linewidths=0.8)
            for i, (x, y) in enumerate(p0):
                ax.annotate(
                    str(i + 1),
                    (x, y),
                    xytext=(4, -4),
                    textcoords="offset points",
                    fontsize=8,
                    color="white",
                    gid="point-label",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.6, "lw": 0},
                )
            ax.set_title("points", fontsize=9)
            ax.set_xlim(-0.5, w0 - 0.5)
            ax.set_ylim(h0 - 0.5, -0.5)
            continue
        i = k - 1
        ax.imshow(b, interpolation="nearest")
        image = ax.imshow(
            maps[i],
            cmap="jet",
            alpha=0.45,
            extent=(-0.5, w1 - 0.5, h1 - 0.5, -0.5),
            interpolation="bilinear",
            vmin=vmin,
            vmax=vmax,
        )
        if p1 is not None:
            ax.scatter([p1[i, 0]], [p1[i, 1]], s=120, facecolors="none", edgecolors="white", linewidths=2)
        x, y = p0[i]
        ax.set_title(f"point {i + 1} ({x:.0f}, {y:.0f})", fontsize=9)
        ax.set_xlim(-0.5, w1 - 0.5)
        ax.set_ylim(h1 - 0.5, -0.5)
    cax = fig.add_axes((1 - 75 / fig.bbox.width, 0.1, 12 / fig.bbox.width, 0.8))
    fig.colorbar(image, cax=cax, label="similarity")
    _stamp(fig, watermark)
    if out_path is not None:
        _save(fig, out_path)
    return fig
