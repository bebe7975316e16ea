"""One call for a pair of images: point transfer, or dense mutual nearest neighbours in LightGlue's layout.

``match_pair(extractor, image0, image1)`` extracts both images once and returns a dict shaped like LightGlue's
``rbd(matcher({"image0": feats0, "image1": feats1}))`` merged with the keypoints of both images, so code written
for LightGlue (``kpts0[m[:, 0]]``, ``kpts1[m[:, 1]]``) runs unchanged. :class:`ImageFeatures` is one image's feature
map travelling with its name and original size, so nothing downstream takes sizes by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .matching import match_points, mutual_nearest_neighbors
from .matching.cells import cell_centers

__all__ = ["ImageFeatures", "extract_features", "match_descriptors", "match_pair", "unbatch"]


@dataclass(frozen=True)
class ImageFeatures:
    """One image's DIFT features with what is needed to use them: an item of a ``FeatureBatch``.

    Attributes:
        features: feature map ``[C, h, w]``.
        name: the image's name (its path, or ``<Image>`` for in-memory inputs).
        original_size: (width, height) of the image before resizing; pixel coordinates refer to it.
    """

    features: torch.Tensor  # [C, h, w]
    name: str
    original_size: tuple[int, int]  # (W, H)

    def __post_init__(self) -> None:
        if not isinstance(self.features, torch.Tensor) or self.features.ndim != 3:
            shape = list(self.features.shape) if isinstance(self.features, torch.Tensor) else type(self.features)
            raise ValueError(f"ImageFeatures.features must be a [C, h, w] tensor, got {shape} for {self.name}")
        w, h = (int(v) for v in self.original_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"ImageFeatures.original_size must be a positive (W, H), got {self.original_size}")
        object.__setattr__(self, "original_size", (w, h))

    @property
    def cell_size(self) -> tuple[float, float]:
        """(width, height) in image pixels of one feature cell."""
        w, h = self.original_size
        return w / self.features.shape[2], h / self.features.shape[1]


def unbatch(batch: Any) -> list[ImageFeatures]:
    """Split a ``FeatureBatch`` (from :meth:`DiftExtractor.extract_prepared`) into one :class:`ImageFeatures` each."""
    missing = [a for a in ("features", "names", "original_sizes") if not hasattr(batch, a)]
    if missing:
        raise TypeError(
            f"unbatch takes a FeatureBatch (features, names, original_sizes); {type(batch).__name__} lacks {missing}"
        )
    if not len(batch.features) == len(batch.names) == len(batch.original_sizes):
        raise ValueError(
            f"FeatureBatch is inconsistent: {len(batch.features)} maps, {len(batch.names)} names, "
            f"{len(batch.original_sizes)} sizes"
        )
    return [ImageFeatures(f, n, s) for f, n, s in zip(batch.features, batch.names, batch.original_sizes)]


def extract_features(extractor: Any, images: Any, prompt: str | Sequence[str] | None = None) -> list[ImageFeatures]:
    """Extract ``images`` (paths, PIL images, arrays; see :meth:`DiftExtractor.extract`) into :class:`ImageFeatures`.

    Images that preprocess to different sizes (``image_size=None``) are extracted one call per size.
    """
    prepared = extractor.prepare(images)
    if not prepared:
        raise ValueError("no images to extract")
    prompts = [prompt] * len(prepared) if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(prepared):
        raise ValueError(f"got {len(prompts)} prompts for {len(prepared)} images; pass one prompt or one per image")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(tuple(p.pixels.shape), []).append(i)
    out: list[ImageFeatures | None] = [None] * len(prepared)
    for idx in groups.values():
        batch = extractor.extract_prepared(
            [prepared[i] for i in idx], [prompts[i] for i in idx] if prompt is not None else None
        )
        for i, item in zip(idx, unbatch(batch)):
            out[i] = item
    return out  # type: ignore[return-value]


def match_descriptors(
    desc0: torch.Tensor,  # [N0, C]
    desc1: torch.Tensor,  # [N1, C]
    *,
    mutual: bool = True,
    min_score: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # [N0] long, [N0] float32
    """Cosine nearest neighbours from image 0 to image 1, LightGlue/hloc's ``matches0``/``matching_scores0``.

    Args:
        desc0, desc1: descriptors ``[N0, C]`` and ``[N1, C]`` (need not be normalised).
        mutual: keep a match only when each is the other's nearest neighbour.
        min_score: keep matches with cosine >= ``min_score``.

    Returns:
        ``(matches0 [N0] long, scores0 [N0] float32)``: index into desc1 or −1, cosine (0 where unmatched).
    """
    if mutual:
        return mutual_nearest_neighbors(desc0, desc1, min_score=min_score)
    from .faiss_utils import knn

    desc0, desc1 = F.normalize(desc0.float(), dim=1), F.normalize(desc1.float(), dim=1)
    matches0 = torch.full((len(desc0),), -1, dtype=torch.long, device=desc0.device)
    scores0 = torch.zeros(len(desc0), device=desc0.device)
    if len(desc0) == 0 or len(desc1) == 0:
        return matches0, scores0
    score, index = knn(desc1, desc0, 1)
    keep = torch.ones_like(score[:, 0], dtype=torch.bool) if min_score is None else score[:, 0] >= min_score
    matches0[keep], scores0[keep] = index[keep, 0], score[keep, 0]
    return matches0, scores0


def match_pair(
    extractor: Any,
    image0: Any,
    image1: Any,
    *,
    points0: torch.Tensor | Sequence[Sequence[float]] | None = None,
    mutual: bool = True,
    min_score: float | None = None,
    prompt: str | None = None,
) -> dict[str, torch.Tensor]:
    """Match two images: transfer ``points0`` to image 1, or find dense mutual nearest neighbours.

    Args:
        extractor: a :class:`~dift_fast.DiftExtractor` (may be None when both images are :class:`ImageFeatures`).
        image0, image1: paths, PIL images, uint8 arrays, preprocessed tensors, or already extracted
            :class:`ImageFeatures` (extract a gallery once, then match many pairs without re-extracting).
        points0: ``[N, 2]`` (x, y) integer pixels of image 0 to transfer (floats are rounded). None: dense matching.
        mutual: dense: keep mutual nearest neighbours only (else every cell's nearest neighbour). Points: also
            transfer each found point back to image 0 and report in ``valid`` whether it lands within one
            feature cell of where it started (a cycle-consistency check; it doubles the matching work).
        min_score: keep (dense) or mark valid (points) only matches with cosine >= ``min_score``.
        prompt: text prompt for extraction (default: the extractor's config).

    Returns:
        With ``points0`` (rows in the order given):
            ``points0 [N, 2]`` long, ``points1 [N, 2]`` long (x, y in image 1), ``scores [N]`` cosine,
            ``valid [N]`` bool (passes ``min_score`` and, with ``mutual``, the cycle check).
        Without, as LightGlue's ``rbd(matcher(...))`` plus the keypoints:
            ``keypoints0 [N0, 2]``, ``keypoints1 [N1, 2]`` float32: the centre of every feature cell in image pixels
            (0-based pixel centres, row-major cells); ``matches [K, 2]`` long (index into keypoints0, keypoints1),
            ordered by the first index; ``scores [K]`` cosine; ``matches0 [N0]`` (−1 = unmatched) and
            ``matching_scores0 [N0]`` (0 where unmatched), hloc's per-keypoint form of the same matches;
            ``image_size0``, ``image_size1``: (W, H).
    """
    f0, f1 = _features_of_pair(extractor, image0, image1, prompt)
    if points0 is not None:
        return _transfer(f0, f1, points0, mutual=mutual, min_score=min_score)
    desc0 = f0.features.flatten(1).T  # [h0*w0, C]: cells in row-major order, as cell_centers lists them
    desc1 = f1.features.flatten(1).T.to(desc0.device)
    matches0, scores0 = match_descriptors(desc0, desc1, mutual=mutual, min_score=min_score)
    i0 = torch.where(matches0 > -1)[0]
    device = desc0.device
    return {
        "keypoints0": cell_centers(*f0.features.shape[1:], f0.original_size).to(device),
        "keypoints1": cell_centers(*f1.features.shape[1:], f1.original_size).to(device),
        "matches": torch.stack([i0, matches0[i0]], dim=-1),
        "scores": scores0[i0],
        "matches0": matches0,
        "matching_scores0": scores0,
        "image_size0": torch.tensor(f0.original_size, dtype=torch.float32, device=device),
        "image_size1": torch.tensor(f1.original_size, dtype=torch.float32, device=device),
    }


def _features_of_pair(extractor: Any, image0: Any, image1: Any, prompt: str | None) -> tuple[ImageFeatures, ...]:
    todo = [i for i, img in enumerate((image0, image1)) if not isinstance(img, ImageFeatures)]
    images = [image0, image1]
    if todo:
        if extractor is None:
            raise ValueError("match_pair needs an extractor to extract images that are not ImageFeatures")
        for i, item in zip(todo, extract_features(extractor, [images[i] for i in todo], prompt)):
            images[i] = item
    return images[0], images[1]


def _transfer(
    f0: ImageFeatures, f1: ImageFeatures, points0: Any, *, mutual: bool, min_score: float | None
) -> dict[str, torch.Tensor]:
    from .matching import check_points

    pts0 = check_points(points0, f0.original_size, "points0").to(f0.features.device)
    tgt = f1.features.to(f0.features.device)
    points1, scores = match_points(f0.features, tgt, pts0, f0.original_size, f1.original_size)
    valid = torch.ones_like(scores, dtype=torch.bool)
    if min_score is not None:
        valid &= scores >= min_score
    if mutual and len(pts0):
        back, _ = match_points(tgt, f0.features, points1, f1.original_size, f0.original_size)
        cell = torch.tensor(f0.cell_size, device=back.device)
        valid &= ((back - pts0).abs() <= cell).all(dim=1)
    return {"points0": pts0, "points1": points1, "scores": scores, "valid": valid}
