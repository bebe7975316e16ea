"""Edit propagation, as DIFT's demo (``edit_propagation.ipynb``) does it: an RGBA edit drawn on a source image is
carried onto other images of the same kind of thing.

1. Up to ``n_points`` pixels under the edit (alpha > 0) are drawn at random (seeded).
2. Each is transferred to the target by point transfer (:func:`~dift_fast.matching.match_points`: cosine argmax
   over the target's feature map upsampled to the target's size).
3. A homography source -> target is fitted to the pairs with RANSAC (``cv2.findHomography``, 5 px threshold).
4. The edit's premultiplied colour and its alpha are warped into the target and composited over it.

A target whose fit has too few inliers (fewer than ``min_inliers``, or than ``min_inlier_fraction`` of the points)
gets no picture and a reason instead; the demo has no such check, the thresholds are dift-fast's. Inliers are
counted once per distinct target pixel: feature maps with "hub" cells send hundreds of source points to the same
few target pixels, and RANSAC then fits a homography that collapses the edit onto them with many inliers. A fit
that sends part of the edit's box beyond the horizon (which would fold it) or scales its area by more than 100x
either way is refused too. A target that cannot be read or fails to extract fails alone, with its
reason; the others go on.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .extras import import_extra
from .images import ImageLike, describe_source, load_rgb, prepare_image
from .matching import match_points

__all__ = [
    "EditPropagationWarning",
    "EditResult",
    "composite_edit",
    "load_edit",
    "propagate_edit",
    "sample_edit_points",
    "transfer_edit",
]

N_POINTS = 1000  # points sampled under the edit (DIFT's demo)
RANSAC_THRESHOLD = 5.0  # px, cv2.findHomography's reprojection threshold (DIFT's demo)
MIN_INLIERS = 12  # fewer RANSAC inliers than this: no output (dift-fast's choice)
MIN_INLIER_FRACTION = 0.1  # ... or fewer than this fraction of the points (random pairs give a few percent)
MAX_AREA_RATIO = 100.0  # a fit scaling the edit's area by more than this (or less than its inverse) is refused


class EditPropagationWarning(UserWarning):
    """A target got no edit (too few inliers, unreadable image, ...); the message says which and why."""


@dataclass
class EditResult:
    """What happened to one target."""

    name: str  # the target, as messages name it
    image: Image.Image | None  # the target with the edit composited (RGB), None when it failed
    homography: np.ndarray | None  # [3, 3] source pixels -> target pixels (None when no fit)
    inliers: int  # RANSAC inliers, counted once per distinct target pixel
    points: int  # point pairs the homography was fitted to
    reason: str | None = None  # why there is no image


def load_edit(edit: str | Any, size: tuple[int, int] | None = None, name: str | None = None) -> np.ndarray:
    """An edit as ``[H, W, 4]`` uint8 RGBA (straight alpha), checked against the source ``size`` (W, H).

    Args:
        edit: a path (PNG with transparency), a PIL image with an alpha channel (RGBA, LA, or a palette or
            grayscale image with transparency), or a uint8 ``[H, W, 4]`` array.
        size: the source image's (width, height); a different size is an error.
        name: how the edit is named in messages.
    """
    label = name or (str(edit) if isinstance(edit, (str, os.PathLike)) else f"<{type(edit).__name__}>")
    if isinstance(edit, np.ndarray):
        if edit.dtype != np.uint8 or edit.ndim != 3 or edit.shape[2] != 4:
            raise ValueError(f"edit {label}: arrays must be uint8 [H, W, 4] (RGBA), got {edit.dtype} {edit.shape}")
        rgba = np.ascontiguousarray(edit)
    else:
        if isinstance(edit, Image.Image):
            img = edit
        elif isinstance(edit, (str, os.PathLike)):
            try:
                with Image.open(edit) as opened:
                    opened.load()
                    img = opened.copy()
            except FileNotFoundError:
                raise FileNotFoundError(f"edit {label}: no such file") from None
            except (OSError, SyntaxError, ValueError) as err:
                raise ValueError(f"edit {label}: not an image PIL can read ({err})") from None
        else:
            raise TypeError(f"edit {label}: expected a path, PIL image or uint8 [H, W, 4] array")
        if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in img.info:
            raise ValueError(f"edit {label} has no alpha channel (mode {img.mode}); draw the edit on a transparent "
                             "layer over the source and save it as an RGBA PNG")
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
    h, w = rgba.shape[:2]
    if size is not None and (w, h) != tuple(size):
        raise ValueError(f"edit {label} is {w}x{h} but the source image is {size[0]}x{size[1]}; the edit must be "
                         "drawn at the source's size")
    if not (rgba[..., 3] > 0).any():
        raise ValueError(f"edit {label} is fully transparent: nothing to propagate")
    return rgba


def sample_edit_points(alpha: np.ndarray, n_points: int = N_POINTS, seed: int = 0) -> np.ndarray:  # [N, 2] int64
    """Up to ``n_points`` distinct pixels (x, y) where ``alpha`` [H, W] > 0, drawn without replacement (seeded)."""
    if n_points < 4:
        raise ValueError(f"n_points must be >= 4 (a homography needs 4 pairs), got {n_points}")
    ys, xs = np.nonzero(np.asarray(alpha) > 0)
    pts = np.stack([xs, ys], axis=1).astype(np.int64)
    if len(pts) > n_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), n_points, replace=False)]
    return pts


def composite_edit(target: np.ndarray, edit: np.ndarray, homography: np.ndarray) -> np.ndarray:  # [Ht, Wt, 3] u8
    """Warp ``edit`` [H, W, 4] u8 by ``homography`` (source -> target pixels) and composite it over ``target``.

    Colour is premultiplied by alpha before the (bilinear) warp, so the colour of fully transparent edit pixels
    never bleeds into the result; then ``out = warped_colour + (1 - warped_alpha) * target``.
    """
    cv2 = import_extra("cv2", "edit propagation")
    alpha = edit[..., 3:4].astype(np.float32) / 255.0
    premultiplied = np.concatenate([edit[..., :3].astype(np.float32) / 255.0 * alpha, alpha], axis=2)
    h, w = target.shape[:2]
    warped = cv2.warpPerspective(premultiplied, np.asarray(homography, dtype=np.float64), (w, h),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = warped[..., :3] + (1.0 - warped[..., 3:]) * (target.astype(np.float32) / 255.0)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _fit(cv2: Any, src: np.ndarray, dst: np.ndarray, threshold: float) -> tuple[np.ndarray | None, int]:
    """RANSAC homography src -> dst and its inliers, counted once per distinct target pixel."""
    H, mask = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), cv2.RANSAC, threshold)
    if H is None or mask is None or not np.isfinite(H).all():
        return None, 0
    inlier_targets = np.asarray(dst)[mask.ravel().astype(bool)]
    return H, len(np.unique(inlier_targets, axis=0))


def _degenerate(H: np.ndarray, points: np.ndarray) -> str | None:
    """Why ``H`` cannot carry the edit spanned by ``points`` [N, 2] (None when it can)."""
    (x0, y0), (x1, y1) = points.min(axis=0) - 0.5, points.max(axis=0) + 0.5
    corners = np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x1, y1, 1.0], [x0, y1, 1.0]]) @ H.T
    if (corners[:, 2] <= 1e-12).any():
        return "the fitted homography sends part of the edit beyond the horizon"
    # In front of the horizon a homography maps the (convex) box to a convex quadrilateral: no folds to check.
    quad = corners[:, :2] / corners[:, 2:]
    area = 0.5 * abs(float((quad[:, 0] * np.roll(quad[:, 1], -1) - np.roll(quad[:, 0], -1) * quad[:, 1]).sum()))
    ratio = area / ((x1 - x0) * (y1 - y0))
    if not 1.0 / MAX_AREA_RATIO <= ratio <= MAX_AREA_RATIO:
        return f"the fitted homography scales the edit's area by {ratio:.3g} (allowed 1/{MAX_AREA_RATIO:g}..{MAX_AREA_RATIO:g})"
    return None


def transfer_edit(
    extractor: Any,
    source: ImageLike,
    edit_rgba: Any,
    targets: Sequence[ImageLike],
    *,
    prompt: str | None = None,
    n_points: int = N_POINTS,
    ransac_threshold: float = RANSAC_THRESHOLD,
    min_inliers: int = MIN_INLIERS,
    min_inlier_fraction: float = MIN_INLIER_FRACTION,
    seed: int = 0,
) -> list[EditResult]:
    """Carry ``edit_rgba`` from ``source`` onto each target; one :class:`EditResult` per target, in order.

    Raises for a bad source or edit (nothing can be done then); a bad target only fails its own result.
    See :func:`propagate_edit` for the arguments.
    """
    cv2 = import_extra("cv2", "edit propagation")
    if not 0.0 <= min_inlier_fraction <= 1.0:
        raise ValueError(f"min_inlier_fraction must be in [0, 1], got {min_inlier_fraction}")
    image_size = extractor.config.image_size
    src = prepare_image(load_rgb(source), image_size, name=describe_source(source))
    edit = load_edit(edit_rgba, src.original_size)
    src_points = sample_edit_points(edit[..., 3], n_points, seed)
    required = max(int(min_inliers), 4, math.ceil(min_inlier_fraction * len(src_points)))
    with torch.inference_mode():
        src_feat = extractor.extract_prepared([src], prompt).features[0]
    results = []
    for target in targets:
        label = describe_source(target)
        try:
            rgb = load_rgb(target, label)
            tgt = prepare_image(rgb, image_size, name=label)
            with torch.inference_mode():
                tgt_feat = extractor.extract_prepared([tgt], prompt).features[0]
        except (ValueError, OSError, FloatingPointError) as err:
            results.append(EditResult(label, None, None, 0, len(src_points), str(err)))
            continue
        matched, _ = match_points(src_feat, tgt_feat, torch.from_numpy(src_points), src.original_size,
                                  tgt.original_size)
        H, inliers = _fit(cv2, src_points, matched.cpu().numpy(), ransac_threshold)
        if H is None or inliers < required:
            why = "RANSAC found no homography" if H is None else f"only {inliers} RANSAC inliers"
            results.append(EditResult(label, None, H, inliers, len(src_points),
                                      f"{why} among {len(src_points)} point pairs (need {required}; inliers on the "
                                      "same target pixel count once)"))
            continue
        why = _degenerate(H, src_points)
        if why is not None:
            results.append(EditResult(label, None, H, inliers, len(src_points), why))
            continue
        out = composite_edit(np.asarray(rgb, dtype=np.uint8), edit, H)
        results.append(EditResult(label, Image.fromarray(out, "RGB"), H, inliers, len(src_points)))
    return results


def propagate_edit(
    extractor: Any,
    source: ImageLike,
    edit_rgba: Any,
    targets: Sequence[ImageLike],
    **options: Any,
) -> list[Image.Image | None]:
    """Carry an RGBA edit drawn on ``source`` onto each of ``targets`` (DIFT's edit propagation).

    Args:
        extractor: a :class:`~dift_fast.DiftExtractor` (any object with ``config.image_size`` and
            ``extract_prepared``).
        source: the image the edit was drawn on (path, PIL image or uint8 array).
        edit_rgba: the edit, the source's size, with alpha: a PNG path, a PIL image or a uint8 ``[H, W, 4]`` array.
        targets: images to carry the edit onto; each may have its own size.
        **options: ``prompt`` (default the config's), ``n_points`` (1000), ``ransac_threshold`` (5 px),
            ``min_inliers`` (12), ``min_inlier_fraction`` (0.1), ``seed`` (0): see :func:`transfer_edit`.

    Returns:
        One RGB PIL image per target (its own size) with the edit composited, or ``None`` where the homography fit
        had too few inliers or the target could not be used; each ``None`` comes with an
        :class:`EditPropagationWarning` saying why.
    """
    results = transfer_edit(extractor, source, edit_rgba, targets, **options)
    for r in results:
        if r.image is None:
            warnings.warn(f"no edit for target {r.name}: {r.reason}", EditPropagationWarning, stacklevel=2)
    return [r.image for r in results]
