"""Export a feature store to an hloc-style HDF5 file (needs h5py: ``pip install h5py``).

Layout, as hloc's ``extract_features`` writes it: one group per image name (a name with ``/`` makes nested
groups, which hloc's ``list_h5_names`` reads back as the full name), holding

- ``dense_features``: the stored map [C, h, w] in the store's dtype (fp16 or fp32);
- ``image_size``: the original (width, height), hloc's convention;

and the file's attributes record the store identity as JSON (``dift_fast_identity``). Every image's file is
checked against its checksum as it is read; a damaged one is left out, named in the attribute
``dift_fast_skipped`` and in the result, and the others are exported.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .store import FeatureStore, StoreCorruptError

__all__ = ["H5Export", "export_h5"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class H5Export:
    """What :func:`export_h5` wrote; usable as the path itself (``h5py.File(result)``)."""

    path: Path
    images: int  # images exported
    skipped: dict[str, str] = field(default_factory=dict)  # damaged images left out: name -> reason

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:  # str(result) is the path too (a test once wrote files named after the repr)
        return os.fspath(self.path)


def export_h5(
    store: FeatureStore | str | os.PathLike,
    out: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    dataset: str = "dense_features",
    cell: tuple[int, int] | None = None,
) -> H5Export:
    """Write the store's images (all, or ``names``) to ``out``, image by image.

    The file is written under a temporary name and renamed, so an interrupted export leaves no partial file.
    Images whose feature file is damaged (checksum mismatch) are skipped and reported in the result.

    Args:
        cell: ``(t, block)`` when ``store`` is a store grid (a folder of one store per cell, docs/store.md): the
            cell to export (hloc's layout has one map per image). May be left out for a grid of one cell.
    """
    from ..extras import import_extra

    h5py = import_extra("h5py", "HDF5 export", extra="colmap")
    if not isinstance(store, FeatureStore):
        store = _open_store_or_cell(store, cell)
    elif cell is not None:
        raise ValueError("cell applies to a store grid; this is a feature store of one (t, block) cell")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    entries = store.entries()
    names = sorted(entries) if names is None else list(names)
    missing = [n for n in names if n not in entries]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in store {store.root}: {missing[:5]}")
    skipped: dict[str, str] = {}
    with atomic_path(out) as tmp, h5py.File(tmp, "w", libver="latest") as fd:
        fd.attrs["dift_fast_identity"] = json.dumps(store.meta["identity"], sort_keys=True)
        fd.attrs["format"] = "dift-fast-hloc/1"
        for name in names:
            try:
                features = store.get(name).numpy()
            except (StoreCorruptError, KeyError) as err:
                skipped[name] = str(err.args[0]) if isinstance(err, KeyError) else str(err)
                logger.warning("export-h5: skipped %s", skipped[name])
                continue
            grp = fd.create_group(name)
            grp.create_dataset(dataset, data=features)
            grp.create_dataset("image_size", data=np.array(entries[name].original_size, dtype=np.int64))
        fd.attrs["dift_fast_skipped"] = json.dumps(skipped, sort_keys=True)
    return H5Export(out, len(names) - len(skipped), skipped)


def _open_store_or_cell(path: str | os.PathLike, cell: tuple[int, int] | None) -> FeatureStore:
    """The store at ``path``, or cell ``cell`` of the store grid there (the only cell when a grid has one)."""
    from ..grid import cell_label
    from .grid import StoreGrid, is_store_grid

    if not is_store_grid(path):
        if cell is not None:
            raise ValueError(f"{path} is a feature store of one (t, block) cell, not a grid: drop the cell")
        return FeatureStore.open(path)
    grid = StoreGrid.open(path)
    if cell is None:
        if len(grid.cells) != 1:
            listed = ", ".join(f"{t},{k}" for t, k in grid.cells)
            raise ValueError(f"{path} is a store grid of {len(grid.cells)} (t, block) cells ({listed}); hloc's layout "
                             "holds one map per image: choose a cell with --cell T,BLOCK (cell=(t, block))")
        return grid.stores[grid.cells[0]]
    if tuple(cell) not in grid.stores:
        raise ValueError(f"store grid {path} has no cell {cell_label(*cell)}; it has "
                         + ", ".join(f"{t},{k}" for t, k in grid.cells))
    return grid.stores[tuple(cell)]
