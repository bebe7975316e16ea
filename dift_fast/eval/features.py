"""Features for a benchmark: computed once per image, kept on disk, reloaded on the next run (resumable).

The cache folder holds one sub-folder per feature identity (:mod:`dift_fast.identity`: the model's weights, the
settings that change the numbers, and what ran: backend, graph dtype, device type), and in it one safetensors
file per image, named by a hash of the image's identity string. A CPU fp32 run and a GPU bf16 run therefore never
share entries. Files are written atomically (:mod:`dift_fast.atomic`), so an interrupted run leaves only
complete entries behind.

A :class:`GridFeatureCache` is one such cache per (t, block) cell of a grid (``dift-fast sweep``). Its cell caches
are ordinary :class:`FeatureCache` s, handed to the unchanged benchmark runners; when a runner asks
:func:`ensure_features` for an image, every cell that lacks it is computed from one network pass per t
(``extract_grid_prepared``), so the runners of the other cells find it cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..identity import extractor_identity, identity_digest
from ..images import PreparedImage

__all__ = ["FeatureCache", "GridFeatureCache", "ImageItem", "ensure_features", "file_identity"]


@dataclass
class ImageItem:
    """One image a benchmark needs features for."""

    ident: str  # identity in the cache: a hash of the file's bytes, or of a generated image's pixels
    name: str  # shown in messages
    load: Callable[[], PreparedImage]  # prepares the image (only called when its features are missing)
    prompt: str = ""


def file_identity(path: str | os.PathLike, *extra: Any) -> str:
    """Identity of an image file: a hash of its bytes (moved or copied files hit the cache), plus ``extra``."""
    digest = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    return json.dumps(["file", digest, *extra])


class FeatureCache:
    """On-disk features of one feature identity, with a small in-memory LRU for pair-wise access.

    Args:
        root: the cache folder (one sub-folder per identity).
        identity: the extractor whose features are cached (its identity is taken from what it runs), or a
            feature identity dict (:func:`dift_fast.identity.feature_identity`).
        memory_items: feature maps kept in memory.
    """

    def __init__(self, root: str | os.PathLike, identity: Any, memory_items: int = 64) -> None:
        if not isinstance(identity, Mapping):
            if not hasattr(identity, "extract_prepared"):
                raise TypeError(
                    "FeatureCache takes the extractor (or its feature identity dict), got "
                    f"{type(identity).__name__}: a config alone does not say what ran (backend, graph dtype, device)"
                )
            identity = extractor_identity(identity)
        self.identity = json.loads(json.dumps(dict(identity), sort_keys=True))
        self.dir = Path(root) / identity_digest(self.identity)[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "identity.json"
        if not meta.exists():
            write_atomic(meta, json.dumps(self.identity, indent=1, sort_keys=True) + "\n")
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_items = memory_items
        self.grid: GridFeatureCache | None = None  # set when this cache is one cell of a grid

    def clear_memory(self) -> None:
        """Forget the in-memory copies (the files stay)."""
        self._memory.clear()

    def path(self, ident: str) -> Path:
        digest = hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()
        return self.dir / digest[:2] / f"{digest}.safetensors"

    def __contains__(self, ident: str) -> bool:
        return self.path(ident).is_file()

    def put(self, ident: str, features: torch.Tensor) -> None:  # features: [C, h, w]
        from ..io import write_safetensors

        write_safetensors(self.path(ident), {"features": features}, {"ident": ident})

    def get(self, ident: str) -> torch.Tensor:  # [C, h, w]
        """Features of ``ident`` (KeyError when they were never computed)."""
        if ident in self._memory:
            self._memory.move_to_end(ident)
            return self._memory[ident]
        path = self.path(ident)
        if not path.is_file():
            raise KeyError(f"no cached features for {ident}")
        from safetensors.torch import load_file

        try:
            feats = load_file(str(path))["features"]
        except Exception as err:  # a damaged entry (disk error, killed copy): say which file, never a traceback
            raise ValueError(f"cached features {path} are damaged ({err}); delete that file and rerun to "
                             "recompute them") from None
        self._memory[ident] = feats
        if len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        return feats


def ensure_features(
    extractor: Any,
    items: Sequence[ImageItem],
    cache: FeatureCache,
    *,
    progress: bool = True,
    desc: str = "features",
) -> int:
    """Compute and cache the features of every item that is not cached yet; returns how many were computed.

    Items are extracted ``config.batch_size`` at a time and each batch is written before the next starts, so an
    interrupted run resumes where it stopped. Items with the same identity are computed once. When ``cache`` is a
    cell of a :class:`GridFeatureCache`, every cell of the grid is filled in the same pass (:meth:`GridFeatureCache.ensure`).
    """
    if cache.grid is not None:
        return cache.grid.ensure(items, progress=progress, desc=desc)
    seen: set[str] = set()
    missing = []
    for item in items:
        if item.ident not in seen and item.ident not in cache:
            missing.append(item)
        seen.add(item.ident)
    if not missing:
        return 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not progress)
    bs = extractor.config.batch_size
    for start in range(0, len(missing), bs):
        chunk = missing[start : start + bs]
        prepared = [item.load() for item in chunk]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepared):  # one network call needs one size
            by_shape.setdefault(tuple(p.pixels.shape), []).append(i)
        for idx in by_shape.values():
            batch = extractor.extract_prepared([prepared[i] for i in idx], [chunk[i].prompt for i in idx])
            for i, feats in zip(idx, batch.features):
                cache.put(chunk[i].ident, feats)
        bar.update(len(chunk))
    bar.close()
    return len(missing)


class GridFeatureCache:
    """One :class:`FeatureCache` per (t, block) cell, filled together from one network pass per image and t.

    Args:
        root: the cache folder (each cell's features go to its identity's sub-folder, shared with ``dift-fast
            eval``: a cell's features are those of an extractor configured for it).
        extractor: the grid's extractor (its network loaded for the grid's deepest block).
        cells: the (t, block) cells.
    """

    def __init__(self, root: str | os.PathLike, extractor: Any, cells: Sequence[tuple[int, int]],
                 memory_items: int = 64) -> None:
        extractor.grid_plan(cells=list(cells))  # every cell computable by this extractor (else ValueError)
        self.extractor = extractor
        self.caches: dict[tuple[int, int], FeatureCache] = {}
        for t, k in cells:
            cache = FeatureCache(root, extractor_identity(extractor, t=t, block=k), memory_items)
            cache.grid = self
            self.caches[(t, k)] = cache

    def cell(self, t: int, block: int) -> FeatureCache:
        """The cache of cell (t, block) (a plain :class:`FeatureCache` for the runners)."""
        return self.caches[(t, block)]

    def ensure(self, items: Sequence[ImageItem], *, progress: bool = True, desc: str = "features") -> int:
        """Compute and cache, for every item, the cells that lack it, all from one pass per image and t; returns how
        many images were computed. A batch asks for the cells any of its images lacks; each image's map is stored
        only in the cells that lacked it."""
        seen: set[str] = set()
        missing: list[tuple[ImageItem, list[tuple[int, int]]]] = []
        for item in items:
            if item.ident in seen:
                continue
            seen.add(item.ident)
            lacking = [cell for cell, cache in self.caches.items() if item.ident not in cache]
            if lacking:
                missing.append((item, lacking))
        if not missing:
            return 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc=f"{desc} ({len(self.caches)} cells)", unit="img", disable=not progress)
        bs = self.extractor.config.batch_size
        for start in range(0, len(missing), bs):
            chunk = missing[start : start + bs]
            prepared = [item.load() for item, _ in chunk]
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(prepared):  # one network call needs one size
                by_shape.setdefault(tuple(p.pixels.shape), []).append(i)
            for idx in by_shape.values():
                wanted = {cell for i in idx for cell in chunk[i][1]}
                cells = [cell for cell in self.caches if cell in wanted]
                batch = self.extractor.extract_grid_prepared(
                    [prepared[i] for i in idx], prompt=[chunk[i][0].prompt for i in idx], cells=cells
                )
                for j, i in enumerate(idx):
                    item, lacking = chunk[i]
                    for cell in lacking:
                        self.caches[cell].put(item.ident, batch.features[cell][j])
            bar.update(len(chunk))
        bar.close()
        return len(missing)
