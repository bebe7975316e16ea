"""Exact point transfer between two DIFT feature maps (spec §4): the literal reference and the fast twin.

``match_points_reference`` computes the spec literally (upsample both maps, normalise, cosine argmax) and is the
oracle. ``match_points`` gives the same answer without materialising the upsampled C-channel maps:

* bilinear upsampling is linear, so the dot product of the query with an upsampled target pixel is the bilinear
  interpolation (same weights) of the low-resolution dot-product map ``q · Ft[:, y, x]``;
* the squared norm of an upsampled pixel ``v = Σ a_i b_j Ft[y_i, x_j]`` is the quadratic form
  ``Σ a_i b_j a_k b_l <Ft[y_i, x_j], Ft[y_k, x_l]>`` over its 2x2 low-resolution neighbourhood, which needs only
  five per-cell Gram maps (norms, horizontal, vertical, diagonal and anti-diagonal products), computed once.

Work per pair drops from C·Ht·Wt + N·C·Ht·Wt to C·ht·wt·(5 + N) + N·Ht·Wt, and memory from C·Ht·Wt to N·Ht·Wt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .checks import check_map, check_points, check_size, map_and_size

__all__ = ["cosine_maps", "match_points", "match_points_reference"]

_EPS = 1e-12  # F.normalize's default eps: a zero vector has cosine 0 with everything
_CHUNK_BYTES = 64 << 20  # default budget for one chunk of [n, Ht, Wt] float32 cosine maps
_GRAM_BLOCK = 16  # columns per batched Gram block: 2·h·(b+1)²·C multiply-adds per block
# Query points go through the sampling, normalisation and dot-product matmul in blocks of exactly this many rows
# (the last block padded): BLAS and cuBLAS pick their kernel, and so the float32 summation order, by the shapes
# (one row takes a matrix-vector path that rounds differently from a matrix-matrix one), so a fixed shape makes a
# point's answer independent of which and how many other points share the call, near-ties included.
_QUERY_BLOCK = 16


def match_points_reference(
    src_feat: torch.Tensor,  # [C, hs, ws]
    tgt_feat: torch.Tensor,  # [C, ht, wt]
    src_points: torch.Tensor | Sequence[Sequence[float]],  # [N, 2] (x, y) in source pixels
    src_size: tuple[int, int],  # (W, H) of the source image
    tgt_size: tuple[int, int],  # (W, H) of the target image
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, 2] (x, y) target pixels, [N] cosine
    """The reference's point transfer: upsample both maps to image size, normalise, cosine argmax.

    Memory and work are C x Ht x Wt per pair; use :func:`match_points` for anything beyond a check.
    Ties go to the first maximum in row-major order (``torch.argmax``).
    """
    src_feat, tgt_feat = check_map(src_feat, "src_feat"), check_map(tgt_feat, "tgt_feat")
    if src_feat.shape[0] != tgt_feat.shape[0]:
        raise ValueError(f"feature dimensions differ: src {src_feat.shape[0]}, tgt {tgt_feat.shape[0]}")
    src_size, tgt_size = check_size(src_size, "src_size"), check_size(tgt_size, "tgt_size")
    pts = check_points(src_points, src_size, "src_points").to(src_feat.device)
    (ws, hs), (wt, ht) = src_size, tgt_size
    src_up = F.interpolate(src_feat[None].float(), size=(hs, ws), mode="bilinear", align_corners=False)[0]
    tgt_up = F.interpolate(tgt_feat[None].float(), size=(ht, wt), mode="bilinear", align_corners=False)[0]
    q = src_up[:, pts[:, 1], pts[:, 0]].T  # [N, C]
    q = F.normalize(q, dim=1)
    tgt = F.normalize(tgt_up.flatten(1), dim=0)  # [C, Ht*Wt]
    cos = q @ tgt  # [N, Ht*Wt]
    best, idx = cos.max(dim=1)
    return torch.stack([idx % wt, idx // wt], dim=1), best


@functools.lru_cache(maxsize=64)
def _linear_weights(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index and weights of 1-D bilinear resizing (align_corners=False), read back from ``F.interpolate`` itself.

    Returns ``(i0 [out] long, l0 [out], l1 [out])``: output d = l0·x[i0] + l1·x[i0 + 1], where x[in] means
    x[in - 1] (replicate padding). Probing the kernel with one-hot rows gives its exact weights on every device
    and build (the CPU and CUDA kernels round ``scale·(d + 0.5) − 0.5`` with or without a fused multiply-add).
    Past the last input (i0 = in − 1) the kernel computes l0·x + l1·x, exactly x in real arithmetic; the weights
    are snapped to (1, 0) there so that the border plateau is exactly constant, as in the spec's real-number
    semantics (see :func:`_cosine_chunks`). Cached per (sizes, device); callers never modify the tensors.
    """
    eye = torch.eye(in_size, device=device, dtype=torch.float32).view(1, in_size, 1, in_size)
    weights = F.interpolate(eye, size=(1, out_size), mode="bilinear", align_corners=False).view(in_size, out_size)
    i0 = (weights != 0).to(torch.uint8).argmax(dim=0)  # first input with weight: lambda0 = 1 - lambda1 > 0
    cols = torch.arange(out_size, device=device)
    last = i0 == in_size - 1
    l0 = torch.where(last, torch.ones((), device=device), weights[i0, cols])
    l1 = torch.where(last, torch.zeros((), device=device), weights[(i0 + 1).clamp_max(in_size - 1), cols])
    return i0, l0, l1


def _plateau_start(i0: torch.Tensor, in_size: int) -> int:
    """First output index that reads only the last input (from there on every output equals it), or ``out``."""
    last = (i0 == in_size - 1).nonzero()
    return int(last[0, 0]) if len(last) else len(i0)


def _neighbour_index(size: int, device: torch.device) -> torch.Tensor:  # [size + 1] long
    """0, 1, ..., size − 1, size − 1: the index i0 + 1 of the right/bottom neighbour, replicated at the border."""
    return torch.arange(size + 1, device=device).clamp_max(size - 1)


def _sample_upsampled(
    feat: torch.Tensor,  # [C, h, w] float32
    points: torch.Tensor,  # [N, 2] long (x, y) in pixels of the (W, H) image
    size: tuple[int, int],
) -> torch.Tensor:  # [N, C]
    """Upsampled map (F.interpolate to ``size``) read at integer pixels, without upsampling the map."""
    _, h, w = feat.shape
    W, H = size
    xi0, xl0, xl1 = _linear_weights(w, W, feat.device)
    yi0, yl0, yl1 = _linear_weights(h, H, feat.device)
    x, y = points[:, 0], points[:, 1]
    x0, y0 = xi0[x], yi0[y]
    x1, y1 = _neighbour_index(w, feat.device)[x0 + 1], _neighbour_index(h, feat.device)[y0 + 1]
    bx0, bx1, ay0, ay1 = xl0[x, None], xl1[x, None], yl0[y, None], yl1[y, None]
    hwc = feat.permute(1, 2, 0)  # [h, w, C] view: one gather per corner reads N·C values
    top = hwc[y0, x0] * bx0 + hwc[y0, x1] * bx1
    bottom = hwc[y1, x0] * bx0 + hwc[y1, x1] * bx1
    return top * ay0 + bottom * ay1


def _gram_maps(feat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Dot products between each cell of the replicate-padded map P [C, h+1, w+1] and its right/lower neighbours.

    Returns float32 ``n = <P[y,x], P[y,x]>`` [h+1, w+1], ``hz = <P[y,x], P[y,x+1]>`` [h+1, w],
    ``vt = <P[y,x], P[y+1,x]>`` [h, w+1], ``dg = <P[y,x], P[y+1,x+1]>`` [h, w], ``ad = <P[y,x+1], P[y+1,x]>`` [h, w].
    The products of the unpadded map are diagonals of batched row-block Gram matrices (a few times more
    multiply-adds than the 5·C·h·w needed, but on BLAS, reading the map once, and unaffected by the thread
    contention that makes elementwise product-and-sum passes slow); padding is then applied to the small maps.
    """
    _, h, w = feat.shape
    n, hz = feat.new_empty(h, w), feat.new_empty(h, w - 1)
    vt, dg, ad = feat.new_empty(h - 1, w), feat.new_empty(h - 1, w - 1), feat.new_empty(h - 1, w - 1)
    for x0 in range(0, max(w - 1, 1), _GRAM_BLOCK):  # blocks of columns overlapping by one
        x1 = min(x0 + _GRAM_BLOCK + 1, w)
        blk = feat[:, :, x0:x1]
        same = torch.bmm(blk.permute(1, 2, 0), blk.permute(1, 0, 2))  # [h, b, b]: within a row
        down = torch.bmm(blk[:, :-1].permute(1, 2, 0), blk[:, 1:].permute(1, 0, 2))  # [h-1, b, b]: y vs y+1
        n[:, x0:x1] = same.diagonal(0, 1, 2)
        hz[:, x0:x1 - 1] = same.diagonal(1, 1, 2)
        vt[:, x0:x1] = down.diagonal(0, 1, 2)
        dg[:, x0:x1 - 1] = down.diagonal(1, 1, 2)
        ad[:, x0:x1 - 1] = down.diagonal(-1, 1, 2)
    # Padding: row h is row h-1 and column w is column w-1, so a product with a padded neighbour is a product
    # the unpadded maps already hold (e.g. <P[y, w-1], P[y+1, w]> = vt[y, w-1]).
    rows, cols = _neighbour_index(h, feat.device), _neighbour_index(w, feat.device)
    corner = n[-1:, -1:]
    n_p = n.index_select(0, rows).index_select(1, cols)
    hz_p = torch.cat([hz, n[:, -1:]], 1).index_select(0, rows)
    vt_p = torch.cat([vt, n[-1:]], 0).index_select(1, cols)
    dg_p = torch.cat([torch.cat([dg, vt[:, -1:]], 1), torch.cat([hz[-1:], corner], 1)], 0)
    ad_p = torch.cat([torch.cat([ad, vt[:, -1:]], 1), torch.cat([hz[-1:], corner], 1)], 0)
    return n_p, hz_p, vt_p, dg_p, ad_p


def _upsampled_inverse_norms(feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # [H, W] float32
    """1 / max(‖v‖, eps) for every pixel v of the upsampled map, from the 2x2 low-resolution quadratic form.

    With P the map padded by one replicated row and column, row weights (a0, a1) on rows (y, y+1) and column
    weights (b0, b1) on columns (x, x+1):
    ‖v‖² = a0²‖r0‖² + 2·a0·a1·<r0, r1> + a1²‖r1‖², r_i = b0·P[y+i, x] + b1·P[y+i, x+1], where
    ‖r_i‖² = b0²·n[y+i, x] + 2·b0·b1·hz[y+i, x] + b1²·n[y+i, x+1] and
    <r0, r1> = b0²·vt[y, x] + b0·b1·(dg[y, x] + ad[y, x]) + b1²·vt[y, x+1].
    The Gram maps are float32 dot products (relative error ~1e-7, like the reference's own float32 norms); the
    form is evaluated in float64 so that its mixed-sign terms add no error of their own.
    """
    _, h, w = feat.shape
    W, H = size
    n, hz, vt, dg, ad = (g.double() for g in _gram_maps(feat))
    xi0, xl0, xl1 = _linear_weights(w, W, feat.device)
    yi0, yl0, yl1 = _linear_weights(h, H, feat.device)
    xi1 = xi0 + 1
    b0, b1 = xl0.double(), xl1.double()

    def cols(m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return m.index_select(1, idx)

    # Column interpolation for every low-resolution row: [h+1, W] and [h, W].
    row_sq = b0 * b0 * cols(n, xi0) + 2 * b0 * b1 * cols(hz, xi0) + b1 * b1 * cols(n, xi1)
    row_cross = b0 * b0 * cols(vt, xi0) + b0 * b1 * cols(dg + ad, xi0) + b1 * b1 * cols(vt, xi1)
    a0, a1 = yl0.double()[:, None], yl1.double()[:, None]
    sq = (a0 * a0 * row_sq.index_select(0, yi0) + 2 * a0 * a1 * row_cross.index_select(0, yi0)
          + a1 * a1 * row_sq.index_select(0, yi0 + 1))  # [H, W]
    return (1.0 / sq.clamp_min(0).sqrt().clamp_min(_EPS)).float()


def _prepare_pair(
    src_feat: torch.Tensor | Any,
    tgt_feat: torch.Tensor | Any,
    src_points: torch.Tensor | Sequence[Sequence[float]],
    src_size: tuple[int, int] | None,
    tgt_size: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
    src_feat, src_size = map_and_size(src_feat, src_size, "src_feat", "src_size")
    tgt_feat, tgt_size = map_and_size(tgt_feat, tgt_size, "tgt_feat", "tgt_size")
    if src_feat.shape[0] != tgt_feat.shape[0]:
        raise ValueError(
            f"feature dimensions differ: src_feat has {src_feat.shape[0]} channels, tgt_feat {tgt_feat.shape[0]}; "
            "both maps must come from the same model and up_ft_index"
        )
    if src_feat.device != tgt_feat.device:
        raise ValueError(f"src_feat is on {src_feat.device} but tgt_feat on {tgt_feat.device}; move both to one device")
    pts = check_points(src_points, src_size, "src_points").to(src_feat.device)
    return src_feat.float().contiguous(), tgt_feat.float().contiguous(), pts, src_size, tgt_size


def _query_dots(src_feat: torch.Tensor, tgt_flat: torch.Tensor, pts: torch.Tensor,
                src_size: tuple[int, int]) -> torch.Tensor:  # [N, P]
    """Dot products of the normalised query vectors with every target cell, in fixed-shape blocks of queries.

    Every block has exactly ``_QUERY_BLOCK`` rows (the last one padded with copies of its first point), so each
    query's row is computed by the same kernels with the same summation order whatever the other queries are.
    """
    n = len(pts)
    if n == 0:
        return tgt_flat.new_empty(0, tgt_flat.shape[1])
    pad = -n % _QUERY_BLOCK
    if pad:
        pts = torch.cat([pts, pts[-1:].expand(pad, 2)])
    rows = []
    for start in range(0, len(pts), _QUERY_BLOCK):
        q = F.normalize(_sample_upsampled(src_feat, pts[start:start + _QUERY_BLOCK], src_size), dim=1)
        rows.append(q @ tgt_flat)
    return torch.cat(rows)[:n]


def _cosine_chunks(
    src_feat: torch.Tensor, tgt_feat: torch.Tensor, pts: torch.Tensor, src_size: tuple[int, int],
    tgt_size: tuple[int, int], chunk: int | None,
):
    """Yield (start, [n, Ht*Wt] cosine maps) for consecutive chunks of the query points."""
    c, ht, wt = tgt_feat.shape
    W, H = tgt_size
    dots = _query_dots(src_feat, tgt_feat.view(c, ht * wt), pts, src_size).view(-1, 1, ht, wt)  # [N, 1, ht, wt]
    inv_norm = _upsampled_inverse_norms(tgt_feat, tgt_size)  # [H, W]
    # Right and bottom border plateaus: pixels past the last cell centre all equal that cell in real arithmetic;
    # F.interpolate's l0·x + l1·x differs from x by an ulp, which would make ties there a coin toss. Copying the
    # plateau's first column/row restores exact ties (first maximum = the plateau's first pixel, as in the spec).
    px = _plateau_start(_linear_weights(wt, W, tgt_feat.device)[0], wt)
    py = _plateau_start(_linear_weights(ht, H, tgt_feat.device)[0], ht)
    if chunk is None:
        chunk = max(1, _CHUNK_BYTES // (4 * H * W))
    elif chunk < 1:
        raise ValueError(f"chunk must be a positive number of query points, got {chunk}")
    for start in range(0, len(pts), chunk):
        num = F.interpolate(dots[start:start + chunk], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        if px < W - 1:
            num[:, :, px + 1:] = num[:, :, px:px + 1]
        if py < H - 1:
            num[:, py + 1:] = num[:, py:py + 1]
        yield start, (num * inv_norm).flatten(1)


def _topk_first(cos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:  # [n, P] -> [n, k], [n, k]
    """Top-k per row, ties broken by the lower index (row-major first), exactly, including ties at rank k."""
    if k == 1:
        best, idx = cos.max(dim=1)  # documented to return the first maximal index
        return best[:, None], idx[:, None]
    kth = torch.topk(cos, k, dim=1).values[:, -1:]  # [n, 1]
    vals = torch.empty(cos.shape[0], k, dtype=cos.dtype, device=cos.device)
    idxs = torch.empty(cos.shape[0], k, dtype=torch.long, device=cos.device)
    for r in range(cos.shape[0]):
        cand = (cos[r] >= kth[r]).nonzero()[:, 0]  # ascending index; usually exactly k
        order = torch.sort(cos[r, cand], descending=True, stable=True).indices[:k]
        idxs[r], vals[r] = cand[order], cos[r, cand[order]]
    return vals, idxs


def match_points(
    src_feat: torch.Tensor | Any,  # [C, hs, ws], or an ImageFeatures
    tgt_feat: torch.Tensor | Any,  # [C, ht, wt], or an ImageFeatures
    src_points: torch.Tensor | Sequence[Sequence[float]],  # [N, 2] (x, y) source pixels
    src_size: tuple[int, int] | None = None,  # (W, H) of the source image (taken from an ImageFeatures)
    tgt_size: tuple[int, int] | None = None,  # (W, H) of the target image
    *,
    top_k: int = 1,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer ``src_points`` from the source image to the target image (spec §4), exactly and fast.

    Same answer as :func:`match_points_reference` (upsample both maps bilinearly to image size, cosine argmax,
    first maximum in row-major order) without materialising an upsampled C-channel map; see the module docstring.

    Args:
        src_feat: source feature map ``[C, hs, ws]`` (or ``[1, C, hs, ws]``), any float dtype, CPU or CUDA; or an
            :class:`~dift_fast.pair.ImageFeatures` (``extract_features(...)[i]``, ``FeatureBatch[i]``), which
            carries its image's size.
        tgt_feat: target feature map ``[C, ht, wt]`` on the same device, or an ``ImageFeatures``.
        src_points: ``[N, 2]`` integer pixel coordinates (x, y) in the source image (floats are rounded).
        src_size: (width, height) of the original source image; not needed with an ``ImageFeatures``.
        tgt_size: (width, height) of the original target image; not needed with an ``ImageFeatures``.
        top_k: number of best target pixels per point (ties: lower row-major index first).
        chunk: query points per cosine-map chunk (memory ``chunk·Ht·Wt·4`` bytes); default: a 64 MiB budget.

    Returns:
        ``([N, 2] long target points (x, y), [N] cosine)`` for ``top_k == 1``, else ``[N, k, 2]`` and ``[N, k]``.
    """
    src_feat, tgt_feat, pts, src_size, tgt_size = _prepare_pair(src_feat, tgt_feat, src_points, src_size, tgt_size)
    W, H = tgt_size
    if not 1 <= top_k <= W * H:
        raise ValueError(f"top_k must be in 1..{W * H} (target pixels), got {top_k}")
    n = len(pts)
    scores = torch.empty(n, top_k, device=tgt_feat.device)
    index = torch.empty(n, top_k, dtype=torch.long, device=tgt_feat.device)
    for start, cos in _cosine_chunks(src_feat, tgt_feat, pts, src_size, tgt_size, chunk):
        scores[start:start + len(cos)], index[start:start + len(cos)] = _topk_first(cos, top_k)
    xy = torch.stack([index % W, index // W], dim=-1)  # [N, k, 2]
    if top_k == 1:
        return xy[:, 0], scores[:, 0]
    return xy, scores


def cosine_maps(
    src_feat: torch.Tensor | Any,  # [C, hs, ws], or an ImageFeatures
    tgt_feat: torch.Tensor | Any,  # [C, ht, wt], or an ImageFeatures
    src_points: torch.Tensor | Sequence[Sequence[float]],  # [N, 2] (x, y) source pixels
    src_size: tuple[int, int] | None = None,
    tgt_size: tuple[int, int] | None = None,
) -> torch.Tensor:  # [N, Ht, Wt] float32
    """Cosine similarity of each source point to every target pixel (the maps :func:`match_points` maximises).

    Maps and sizes as in :func:`match_points` (``ImageFeatures`` carry their sizes).

    Useful as the heat map of :func:`dift_fast.viz.plot_matches`. Memory: N·Ht·Wt floats.
    """
    src_feat, tgt_feat, pts, src_size, tgt_size = _prepare_pair(src_feat, tgt_feat, src_points, src_size, tgt_size)
    W, H = tgt_size
    return torch.cat([cos for _, cos in _cosine_chunks(src_feat, tgt_feat, pts, src_size, tgt_size, None)]).view(
        -1, H, W
    )
