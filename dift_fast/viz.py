"""Pictures of correspondences: two images side by side with numbered points, lines and a similarity heat map.

matplotlib is imported on first use (``pip install dift-fast[viz]``), with the non-interactive Agg backend and
without touching the global pyplot state: each call builds its own Figure and writes a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["plot_matches", "plot_points"]

ImageLike = Any  # PIL.Image, path, [H, W, 3] uint8/float array, or [3, H, W] tensor in [-1, 1] or [0, 1]


def _figure(width_px: int, height_px: int) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise RuntimeError(f"plotting needs matplotlib ({err}); install it with `pip install dift-fast[viz]`") from None
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _to_array(img: ImageLike, name: str) -> np.ndarray:  # [H, W, 3] uint8
    if isinstance(img, (str, os.PathLike)):
        from PIL import Image

        with Image.open(img) as im:
            return np.asarray(im.convert("RGB"))
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


def _to_points(points: Any, name: str, size: tuple[int, int] | None = None) -> np.ndarray:  # [N, 2] float
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] (x, y) points, got shape {list(pts.shape)}")
    return pts


def _colours(n: int) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["hsv"](np.linspace(0, 1, n, endpoint=False) if n else np.zeros(0))


def _save(fig: Any, out_path: str | os.PathLike) -> Path:
    """Write the PNG under a temporary name and rename it, so a failure leaves no half-written picture."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _layout(width_px: int, height_px: int, title: str | None, colorbar: bool) -> tuple[Any, Any]:
    """A figure with one image axes at native resolution, room for a title and a colour bar on the right."""
    top = 30 if title else 0
    right = 85 if colorbar else 0
    fig = _figure(width_px + right, height_px + top)
    fw, fh = width_px + right, height_px + top
    ax = fig.add_axes((0, 0, width_px / fw, height_px / fh))
    return fig, ax


def _heatmap(fig: Any, ax: Any, heatmap: Any, extent: tuple[float, ...], name: str) -> None:
    hm = np.asarray(torch.as_tensor(heatmap).detach().float().cpu())
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D [h, w] map over {name}, got shape {list(hm.shape)}")
    im = ax.imshow(hm, cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear")
    x0, y0, w, h = ax.get_position(original=True).bounds
    cax = fig.add_axes((x0 + w + 0.1 * (1 - w - x0), y0 + 0.1 * h, 0.2 * (1 - w - x0), 0.8 * h))
    fig.colorbar(im, cax=cax, label="similarity")


def _annotate(ax: Any, pts: np.ndarray, colours: np.ndarray, dx: float = 0.0) -> None:
    for i, ((x, y), c) in enumerate(zip(pts, colours)):
        ax.scatter([x + dx], [y], s=36, color=c, edgecolors="black", linewidths=0.8, zorder=3)
        ax.annotate(str(i + 1), (x + dx, y), xytext=(4, -4), textcoords="offset points", fontsize=8,
                    color="white", bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.6, "lw": 0},
                    zorder=4)


def plot_matches(
    img0: ImageLike,
    img1: ImageLike,
    pts0: Any,  # [N, 2] (x, y) in img0
    pts1: Any,  # [N, 2] (x, y) in img1
    out_path: str | os.PathLike,
    scores: Sequence[float] | Any | None = None,  # [N]
    heatmap: Any | None = None,  # [h, w] similarity over img1 (any resolution; stretched to img1)
    *,
    title: str | None = None,
) -> Path:
    """Write a PNG: img0 and img1 side by side, point i numbered i+1 in both, a line joining each pair.

    Args:
        img0, img1: PIL images, paths, ``[H, W, 3]`` arrays or ``[3, H, W]`` tensors.
        pts0, pts1: ``[N, 2]`` matching (x, y) pixel coordinates in img0 and img1.
        out_path: the PNG to write (atomically).
        scores: optional ``[N]`` similarities, printed in the legend and shading the lines.
        heatmap: optional ``[h, w]`` similarity map over img1 (e.g. :func:`dift_fast.matching.cosine_maps` of one
            point), drawn semi-transparently over img1.
        title: optional figure title.

    Returns:
        The written path.
    """
    a, b = _to_array(img0, "img0"), _to_array(img1, "img1")
    p0, p1 = _to_points(pts0, "pts0"), _to_points(pts1, "pts1")
    if len(p0) != len(p1):
        raise ValueError(f"pts0 has {len(p0)} points but pts1 has {len(p1)}; they must pair up")
    sc = None if scores is None else np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64).reshape(-1)
    if sc is not None and len(sc) != len(p0):
        raise ValueError(f"scores has {len(sc)} values for {len(p0)} matches")
    (h0, w0), (h1, w1) = a.shape[:2], b.shape[:2]
    gap = max(8, (w0 + w1) // 100)
    canvas = np.full((max(h0, h1), w0 + gap + w1, 3), 255, np.uint8)
    canvas[:h0, :w0], canvas[:h1, w0 + gap:] = a, b
    fig, ax = _layout(canvas.shape[1], canvas.shape[0], title, heatmap is not None)
    ax.imshow(canvas, interpolation="nearest")
    if heatmap is not None:
        _heatmap(fig, ax, heatmap, (w0 + gap - 0.5, w0 + gap + w1 - 0.5, h1 - 0.5, -0.5), "img1")
    colours = _colours(len(p0))
    for i, ((x0, y0), (x1, y1)) in enumerate(zip(p0, p1)):
        alpha = 0.9 if sc is None else float(0.3 + 0.7 * np.clip(sc[i], 0, 1))
        ax.plot([x0, x1 + w0 + gap], [y0, y1], color=colours[i], lw=1.2, alpha=alpha, zorder=2)
    _annotate(ax, p0, colours)
    _annotate(ax, p1, colours, dx=w0 + gap)
    if sc is not None and len(sc):
        label = "  ".join(f"{i + 1}: {s:.3f}" for i, s in enumerate(sc[:12])) + ("  ..." if len(sc) > 12 else "")
        ax.text(0.005, 0.005, label, transform=ax.transAxes, fontsize=8, color="black", va="bottom",
                bbox={"fc": "white", "alpha": 0.7, "lw": 0})
    ax.set_xlim(-0.5, canvas.shape[1] - 0.5)
    ax.set_ylim(canvas.shape[0] - 0.5, -0.5)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)


def plot_points(
    img: ImageLike,
    points: Any,  # [N, 2] (x, y)
    out_path: str | os.PathLike,
    scores: Sequence[float] | Any | None = None,  # [N]
    heatmap: Any | None = None,  # [h, w] over img
    *,
    title: str | None = None,
) -> Path:
    """Write a PNG of one image with numbered points (and an optional heat map and per-point scores)."""
    a = _to_array(img, "img")
    pts = _to_points(points, "points")
    h, w = a.shape[:2]
    fig, ax = _layout(w, h, title, heatmap is not None)
    ax.imshow(a, interpolation="nearest")
    if heatmap is not None:
        _heatmap(fig, ax, heatmap, (-0.5, w - 0.5, h - 0.5, -0.5), "img")
    _annotate(ax, pts, _colours(len(pts)))
    if scores is not None:
        sc = np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64).reshape(-1)
        if len(sc) != len(pts):
            raise ValueError(f"scores has {len(sc)} values for {len(pts)} points")
        ax.text(0.005, 0.005, "  ".join(f"{i + 1}: {s:.3f}" for i, s in enumerate(sc[:12])), transform=ax.transAxes,
                fontsize=8, va="bottom", bbox={"fc": "white", "alpha": 0.7, "lw": 0})
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)
