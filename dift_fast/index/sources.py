"""Where an index's feature maps come from: a feature file (``dift-fast extract ... --out X.safetensors``) or a
feature store (``dift-fast extract ROOT --out STORE``), read through their public APIs, one map at a time.

Both give the same view: image names in index order (the index's image ids), original sizes, per-map shapes, the
feature identity the maps carry (the store's includes its dtype and PCA), the extraction config they were made
with, and ``features(i)`` ``[C, h, w]`` float32. An index records which source it was built from
(:meth:`FeatureSource.describe`), so ``index query`` can reopen it and check that it still holds the same images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["FeatureSource", "FileSource", "StoreSource", "open_source"]


class FeatureSource:
    """The common view of a feature file and a feature store (see the module docstring)."""

    kind: str  # "file" or "store"
    path: Path
    names: list[str]
    original_sizes: list[tuple[int, int]]
    shapes: list[tuple[int, int, int]]  # [C, h, w] of each map as read
    identity: dict[str, Any] | None  # the maps' identity (a store identity for a store)
    config: dict[str, Any] | None  # the DiftConfig they were extracted with (DiftConfig.to_dict())
    tiny_random: bool  # made by a random-weight model: matches are meaningless

    def features(self, i: int) -> torch.Tensor:  # [C, h, w] float32
        raise NotImplementedError

    def encode(self, features: torch.Tensor) -> torch.Tensor:  # [C, h, w] -> as this source keeps its maps
        """A freshly extracted map as this source's maps are (a store's PCA and precision; a file keeps fp32)."""
        return features.float()

    def index_of(self, name: str) -> int:
        """Position of the image ``name`` (exact, else by file name); KeyError when absent."""
        for i, n in enumerate(self.names):
            if n == name:
                return i
        for i, n in enumerate(self.names):
            if Path(n).name == name:
                return i
        shown = ", ".join(self.names[:5]) + (" ..." if len(self.names) > 5 else "")
        raise KeyError(f"no image {name!r} in {self.kind} {self.path} (it holds {shown})")

    def describe(self) -> dict[str, Any]:
        """What an index records about its source (to reopen and check it)."""
        return {"kind": self.kind, "path": str(self.path.resolve())}

    def lookup(self) -> Callable[[int], tuple[torch.Tensor, tuple[int, int]]]:
        """``image_id -> (features [C, h, w], (W, H))`` for :func:`dift_fast.index.find_points`."""
        return lambda i: (self.features(i), self.original_sizes[i])


class FileSource(FeatureSource):
    """A feature file (:func:`dift_fast.io.load_features`): every map in memory."""

    kind = "file"

    def __init__(self, path: str | os.PathLike) -> None:
        from ..io import load_features

        self.path = Path(path)
        ff = load_features(self.path)
        self._features = ff.features
        self.names = list(ff.names)
        self.original_sizes = [tuple(s) for s in ff.original_sizes]
        self.shapes = [tuple(ff.features.shape[1:])] * len(self.names)
        self.identity = ff.identity
        self.config = ff.config.to_dict()
        self.tiny_random = bool(ff.extra.get("tiny_random"))

    def features(self, i: int) -> torch.Tensor:
        return self._features[i].float()


class StoreSource(FeatureSource):
    """A feature store (:class:`dift_fast.store.FeatureStore`): maps read one at a time, checksums checked."""

    kind = "store"

    def __init__(self, path: str | os.PathLike) -> None:
        from ..store import FeatureStore

        self.path = Path(path)
        self.store = FeatureStore.open(self.path)
        entries = self.store.entries()
        self.names = sorted(entries)
        self.original_sizes = [tuple(entries[n].original_size) for n in self.names]
        self.shapes = [tuple(entries[n].shape) for n in self.names]
        self.identity = dict(self.store.meta["identity"])
        self.config = self.store.meta.get("config") or None
        self.tiny_random = bool(self.store.meta.get("tiny_random"))

    def features(self, i: int) -> torch.Tensor:
        return self.store.get(self.names[i]).float()

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.store.encode(features).float()


def open_source(features: str | os.PathLike | None = None, store: str | os.PathLike | None = None) -> FeatureSource:
    """A feature file or a feature store (exactly one of the two)."""
    if (features is None) == (store is None):
        raise ValueError("give a feature file or --store STORE (one of the two)")
    if store is not None:
        if not Path(store).is_dir():
            raise FileNotFoundError(f"--store {store} is not a folder")
        return StoreSource(store)
    return FileSource(features)
