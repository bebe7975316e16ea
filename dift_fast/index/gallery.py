"""Finding the points of one image in a gallery: image-level retrieval on pooled descriptors, then exact point
transfer (:func:`dift_fast.matching.match_points`) into the best images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..matching import match_points, pooled_descriptors
from .feature_index import FeatureIndex

__all__ = ["GalleryLookup", "PointHits", "find_points"]


@dataclass(frozen=True)
class PointHits:
    """Where the query points land in the best gallery images."""

    image_ids: torch.Tensor  # [K] long: retrieved images, best first
    image_scores: torch.Tensor  # [K] float32: pooled-descriptor cosine
    points: torch.Tensor  # [N, K, 2] long (x, y): each query point transferred into each image
    scores: torch.Tensor  # [N, K] float32: cosine of each transfer


GalleryLookup = Callable[[int], tuple[torch.Tensor, tuple[int, int]]]


def find_points(
    index: FeatureIndex,
    query_feat: torch.Tensor,  # [C, h, w]
    query_size: tuple[int, int],  # (W, H)
    points: torch.Tensor | Sequence[Sequence[int]],  # [N, 2] (x, y) pixels of the query image
    gallery: GalleryLookup | Any,
    *,
    top_images: int = 10,
    exclude: int | None = None,
) -> PointHits:
    """Find query points in a gallery: image-level retrieval on pooled descriptors, then exact point transfer.

    Args:
        index: a cosine index of pooled descriptors (:meth:`FeatureIndex.add_pooled`), image ids = gallery ids.
        query_feat: the query image's feature map ``[C, h, w]``.
        query_size: (width, height) of the query image.
        points: ``[N, 2]`` pixel coordinates (x, y) in the query image.
        gallery: a :class:`dift_fast.io.FeatureFile`, or a function ``image_id -> (feat [C, h, w], (W, H))``.
        top_images: K, the number of retrieved images to transfer the points into.
        exclude: an image id to leave out (the query itself, when it is part of the gallery).

    Returns:
        :class:`PointHits` with the K images (best first) and the transferred points and their cosines.
    """
    lookup = _gallery_lookup(gallery)
    want = top_images + (exclude is not None)
    found = index.search(pooled_descriptors(query_feat), min(want, index.ntotal))
    keep = found.image_ids[0] >= 0
    if exclude is not None:
        keep &= found.image_ids[0] != exclude
    ids, img_scores = found.image_ids[0][keep][:top_images], found.scores[0][keep][:top_images]
    if len(ids) == 0:
        raise ValueError("no gallery image left to search (the index holds only the excluded query image)")
    pts, scores = [], []
    for image_id in ids.tolist():
        feat, size = lookup(image_id)
        xy, cos = match_points(query_feat, feat.to(query_feat.device), points, query_size, size)
        pts.append(xy.cpu())
        scores.append(cos.cpu())
    return PointHits(ids, img_scores, torch.stack(pts, 1), torch.stack(scores, 1))


def _gallery_lookup(gallery: GalleryLookup | Any) -> GalleryLookup:
    if callable(gallery):
        return gallery
    if hasattr(gallery, "features") and hasattr(gallery, "original_sizes"):
        return lambda i: (gallery.features[i], tuple(gallery.original_sizes[i]))
    raise TypeError(f"gallery must be a FeatureFile or a function image_id -> (feat, (W, H)), got {type(gallery)}")
