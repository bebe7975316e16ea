"""Label propagation for DAVIS-2017 video object segmentation, as DIFT's ``eval_davis.py`` does it (spec §5).

For each frame: affinities ``exp(cos / tau)`` from every target cell (query) to every cell of the context frames
(the first frame and the last ``n`` frames), restricted to a square window of ``radius`` feature cells around the
query; per query only the ``topk`` largest affinities are kept (ties with the k-th are kept too, like the
reference's ``aff < kth -> 0``), normalised to sum to 1, and used to average the context labels (the first
frame's one-hot mask, later frames' soft predictions). The reference materialises a (K*hw) x hw matrix; this
computes the same numbers query chunk by query chunk.

The labels can be any non-negative maps: DAVIS propagates one-hot object masks (:func:`to_one_hot`, read back with
:func:`finalize_labels`), JHMDB one Gaussian heat map per joint (:func:`keypoint_heatmaps`, read back with
:func:`heatmap_peaks`). Propagation treats every label channel independently.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.catalog import propagation_overrides

__all__ = [
    "PropagationParams",
    "VideoPropagator",
    "finalize_labels",
    "heatmap_peaks",
    "keypoint_heatmaps",
    "propagate_labels",
    "to_one_hot",
]


@dataclass(frozen=True)
class PropagationParams:
    temperature: float = 0.2  # tau
    n_last_frames: int = 28  # context: the first frame plus this many preceding frames
    topk: int = 15  # affinities kept per query
    radius: int = 15  # square window half-size in feature cells; <= 0: no window (the reference's convention)

    @classmethod
    def for_preset(cls, preset: str | None) -> PropagationParams:
        """The defaults with the preset's own settings on top (``adm-davis``: temperature 0.1, top-k 10)."""
        return cls(**propagation_overrides(preset))


def propagate_labels(
    target: torch.Tensor,  # [C, h, w] target frame features
    context: torch.Tensor,  # [K, C, h, w] context frame features
    labels: torch.Tensor,  # [K, L, h, w] context labels (one-hot or soft)
    params: PropagationParams,
    chunk: int = 1024,
) -> torch.Tensor:  # [L, h, w] soft labels of the target
    """One propagation step (the reference's ``label_propagation``)."""
    if target.ndim != 3 or context.ndim != 4 or labels.ndim != 4:
        raise ValueError(
            f"expected target [C,h,w], context [K,C,h,w], labels [K,L,h,w]; got {list(target.shape)}, "
            f"{list(context.shape)}, {list(labels.shape)}"
        )
    C, h, w = target.shape
    K = context.shape[0]
    if context.shape[1:] != target.shape or labels.shape[0] != K or labels.shape[2:] != (h, w):
        raise ValueError(f"shapes disagree: target {list(target.shape)}, context {list(context.shape)}, "
                         f"labels {list(labels.shape)}")
    L = labels.shape[1]
    hw = h * w
    q = F.normalize(target.reshape(C, hw).float(), dim=0)  # [C, hw]
    keys = F.normalize(context.reshape(K, C, hw).float(), dim=1).permute(1, 0, 2).reshape(C, K * hw)
    key_labels = labels.reshape(K, L, hw).float().permute(1, 0, 2).reshape(L, K * hw)
    ys = torch.arange(h, device=q.device).repeat_interleave(w)  # [hw]
    xs = torch.arange(w, device=q.device).repeat(h)
    key_y, key_x = ys.repeat(K), xs.repeat(K)
    k = min(params.topk, K * hw)
    out = torch.empty(L, hw, device=q.device)
    for start in range(0, hw, chunk):
        stop = min(start + chunk, hw)
        aff = torch.exp(q[:, start:stop].T @ keys / params.temperature)  # [nq, K*hw]
        if params.radius > 0:
            near = ((ys[start:stop, None] - key_y[None]).abs() <= params.radius) & (
                (xs[start:stop, None] - key_x[None]).abs() <= params.radius
            )
            aff = aff * near
        kth = torch.topk(aff, k, dim=1).values.min(dim=1, keepdim=True).values
        aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
        aff = aff / aff.sum(dim=1, keepdim=True)
        out[:, start:stop] = key_labels @ aff.T
    return out.reshape(L, h, w)


def to_one_hot(label_map: np.ndarray, n_labels: int) -> torch.Tensor:  # [L, h, w]
    """One-hot encoding of an integer label map [h, w] with ``n_labels`` channels."""
    lab = torch.as_tensor(np.asarray(label_map, dtype=np.int64))
    if lab.numel() and int(lab.max()) >= n_labels:
        raise ValueError(f"label {int(lab.max())} does not fit {n_labels} channels")
    return F.one_hot(lab, n_labels).permute(2, 0, 1).float()


def finalize_labels(soft: torch.Tensor, stride: int, original_size: tuple[int, int]) -> np.ndarray:
    """Soft labels [L, h, w] -> label map at ``original_size`` (W, H), as the reference does it.

    Bilinear upsampling by ``stride`` (align_corners=False), per-channel min-max normalisation of channels whose
    maximum is positive (the reference's ``norm_mask``), argmax, then a nearest-neighbour resize.
    """
    from PIL import Image

    up = F.interpolate(soft[None].float(), scale_factor=stride, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]
    for c in range(up.shape[0]):
        m = up[c]
        if m.max() > 0:
            m = m - m.min()
            up[c] = m / m.max()
    labels = up.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.array(Image.fromarray(labels).resize(original_size, Image.NEAREST))


def keypoint_heatmaps(points: np.ndarray | torch.Tensor, size: tuple[int, int], sigma: float = 0.5) -> torch.Tensor:
    """One heat map per keypoint [J, h, w]: a Gaussian at the keypoint's nearest feature cell (CRW's labels).

    Args:
        points: ``[J, 2]`` (x, y) in feature cells (pixel / stride); NaN or Inf: an all-zero map (no keypoint).
        size: ``(h, w)`` of the feature map.
        sigma: Gaussian standard deviation in cells, peak 1, cut at ``ceil(3 * sigma)`` cells around the centre
            cell; ``0``: a single 1 at the centre cell. Cells outside the map are dropped, so a keypoint just
            outside keeps its in-bounds tail and one far outside has an all-zero map.
    """
    pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 (cells), got {sigma}")
    h, w = size
    finite = torch.isfinite(pts).all(dim=1)
    centre = torch.floor(torch.where(finite[:, None], pts, torch.zeros_like(pts)) + 0.5)  # [J, 2]
    dx = torch.arange(w, dtype=torch.float64)[None] - centre[:, :1]  # [J, w]
    dy = torch.arange(h, dtype=torch.float64)[None] - centre[:, 1:]  # [J, h]
    if sigma > 0:
        r = math.ceil(3 * sigma)
        gx = torch.exp(-(dx**2) / (2 * sigma**2)) * (dx.abs() <= r)
        gy = torch.exp(-(dy**2) / (2 * sigma**2)) * (dy.abs() <= r)
    else:
        gx, gy = (dx == 0).double(), (dy == 0).double()
    heat = gy[:, :, None] * gx[:, None, :]  # separable: exp(-(dx² + dy²) / 2σ²) on a square window
    return (heat * finite[:, None, None]).float()


def heatmap_peaks(heat: torch.Tensor, topk: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints read back from heat maps [J, h, w] as CRW does it: the mean of each map's ``topk`` largest cells.

    Returns:
        ``([J, 2] float64 (x, y) in feature cells, [J] bool visible)``; a map that is zero everywhere has no
        keypoint (visible False, point NaN). The ``topk`` cells are weighted by their values.
    """
    if heat.ndim != 3:
        raise ValueError(f"heat maps must be [J, h, w], got {list(heat.shape)}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    J, h, w = heat.shape
    flat = heat.reshape(J, h * w).double()
    vals, idx = torch.topk(flat, min(topk, h * w), dim=1)
    total = vals.sum(dim=1, keepdim=True)
    visible = total[:, 0] > 0
    weights = vals / torch.where(total > 0, total, torch.ones_like(total))
    xy = torch.stack([(weights * (idx % w)).sum(dim=1), (weights * (idx // w)).sum(dim=1)], dim=1)
    return torch.where(visible[:, None], xy, torch.full_like(xy, float("nan"))), visible


class VideoPropagator:
    """Keeps the first frame and a queue of the last ``n`` frames' features and soft labels."""

    def __init__(self, first_features: torch.Tensor, first_labels: torch.Tensor, params: PropagationParams) -> None:
        self.params = params
        self.first = (first_features, first_labels)
        self.queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=max(params.n_last_frames, 0))

    def step(self, features: torch.Tensor) -> torch.Tensor:  # [C, h, w] -> [L, h, w]
        """Propagate to the next frame and push it (with its soft prediction) into the context queue."""
        ctx = [self.first, *self.queue]
        soft = propagate_labels(
            features, torch.stack([f for f, _ in ctx]), torch.stack([lab for _, lab in ctx]), self.params
        )
        if self.params.n_last_frames > 0:
            self.queue.append((features, soft))
        return soft
