"""`StoreGrid`: the features of several (t, block) cells of the same images, one feature store per cell.

Layout of a grid folder (``dift-fast extract ROOT --out GRID --timesteps 101,261 --blocks 1,2``)::

    grid.json           format, and every cell: t, block, and the sub-folder of its store (the union of every run)
    writer.lock         flock held by the run that writes the grid (taken before anything is written)
    t101-block1/        an ordinary feature store (docs/store.md) of cell (101, 1): its store.json holds that
    t101-block2/        cell's exact identity (t and block included) and config, its files their checksums
    ...

Every cell is a complete store, so everything that reads a store reads a cell (``store info``, ``export-h5``,
``match-pairs --store GRID/t261-block1``), with its crash safety, resumability and checksums unchanged. One run
computes all cells of an image from one network pass per t (``extract_grid``) and writes each cell's map into that
cell's store. An image is done when every cell of this run has it; an image that a crash left in some cells only is
computed again and written to all of them (a store write replaces a file atomically). A rerun with a grown grid
adds the new cells' stores and computes only the images they lack.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..grid import Cell, cell_label, cell_name
from .store import FeatureStore, StoreConfigError, StoreError, _raise_if_full, _take_lock, refuse_foreign_folder

__all__ = ["GRID_FORMAT", "StoreGrid", "is_store_grid"]

GRID_FORMAT = "dift-fast-store-grid/1"
GRID_FILE = "grid.json"


def is_store_grid(path: str | os.PathLike) -> bool:
    """True when ``path`` is a grid folder (it holds ``grid.json``)."""
    return (Path(path) / GRID_FILE).is_file()


class StoreGrid:
    """A folder of feature stores, one per (t, block) cell. Open it with :meth:`open` or :meth:`create_or_open`.

    Attributes:
        root: the grid folder.
        stores: ``{(t, block): FeatureStore}`` of the cells opened (all listed cells for :meth:`open`, this run's
            cells for :meth:`create_or_open`).
    """

    def __init__(self, root: Path, stores: dict[Cell, FeatureStore], meta: dict[str, Any]) -> None:
        self.root = root
        self.stores = stores
        self.meta = meta
        self._lock_fd: int | None = None
        self._lacking: dict[str, list[Cell]] = {}  # name -> the cells it lacks (set by pending())

    @property
    def cells(self) -> list[Cell]:
        return list(self.stores)

    def cell(self, t: int, block: int) -> FeatureStore:
        """The store of cell (t, block)."""
        if (t, block) not in self.stores:
            raise KeyError(
                f"grid {self.root} has no cell {cell_label(t, block)}; it has "
                f"{', '.join(cell_label(*c) for c in self.stores) or 'no cells'}"
            )
        return self.stores[(t, block)]

    # -- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike) -> StoreGrid:
        """Open an existing grid for reading: every cell it lists (safe while a writer runs)."""
        root = Path(root)
        meta = _read_meta(root)
        stores = {}
        for entry in meta["cells"]:
            cell = (int(entry["t"]), int(entry["block"]))
            if (root / entry["store"] / "store.json").is_file():  # a listed cell whose creation was cut short: none
                stores[cell] = FeatureStore.open(root / entry["store"])
        return cls(root, stores, meta)

    @classmethod
    def create_or_open(
        cls,
        root: str | os.PathLike,
        identities: Mapping[Cell, dict[str, Any]],
        configs: Mapping[Cell, dict[str, Any]],
        *,
        overwrite: bool = False,
        must_exist: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> StoreGrid:
        """Open the grid at ``root`` for writing the cells of ``identities`` (a store identity per cell), creating
        the grid and any cell store it lacks. Returns with the grid's lock and every cell store's lock held.

        Every existing cell store is checked against its identity before anything is written, so a run with other
        settings changes nothing. ``overwrite`` replaces this run's cell stores (other cells are kept).

        Raises:
            StoreLockedError: another process is writing to the grid or one of its cells.
            StoreConfigError: a cell's store was made with other settings (named), and not ``overwrite``.
            StoreError: ``root`` is a single feature store or a non-empty folder of something else (nothing there
                is changed), or ``must_exist`` and there is no grid.
            StoreFullError: the disk filled up while creating it.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"--out {root} is a file, not a store grid folder; choose another --out")
        if (root / "store.json").is_file():
            raise StoreError(
                f"{root} is a feature store of one (t, block) cell, not a grid; write the grid to another "
                "--out (nothing was changed)"
            )
        exists = is_store_grid(root)
        if not exists:
            if must_exist:
                raise StoreError(f"--resume: {root} is not an existing store grid; drop --resume to create it")
            refuse_foreign_folder(root, "a store grid")
        root.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_lock(root)
        opened: dict[Cell, FeatureStore] = {}
        try:
            meta = (
                _read_meta(root)
                if is_store_grid(root)
                else {"format": GRID_FORMAT, "cells": [], "created": time.time(), **(extra or {})}
            )
            listed = {(int(c["t"]), int(c["block"])): c["store"] for c in meta["cells"]}
            if not overwrite:  # every difference, before anything is created
                for cell, identity in identities.items():
                    folder = root / listed.get(cell, cell_name(*cell))
                    if (folder / "store.json").is_file():
                        have = FeatureStore.open(folder).meta["identity"]
                        if have != identity:
                            from .identity import describe_diff

                            raise StoreConfigError(
                                f"store grid {root}: cell {cell_label(*cell)} was made with different settings "
                                f"({describe_diff(have, identity)}); rerun with the grid's settings, use another "
                                "--out, or pass --overwrite to replace this run's cells"
                            )
            added = [c for c in identities if c not in listed]
            if added or not is_store_grid(root):  # listed before the cells are made: a crash leaves a valid grid
                meta["cells"] = [*meta["cells"], *({"t": t, "block": k, "store": cell_name(t, k)} for t, k in added)]
                try:
                    write_atomic(
                        root / GRID_FILE, json.dumps(meta, indent=1, sort_keys=True) + "\n", tmp_dir=root / "tmp"
                    )
                except OSError as err:
                    _raise_if_full(err, root, "writing grid.json")
                    raise
            for cell, identity in identities.items():
                folder = root / listed.get(cell, cell_name(*cell))
                opened[cell] = FeatureStore.create_or_open(folder, identity, configs[cell], overwrite=overwrite)
        except BaseException:
            for store in opened.values():
                store.unlock()
            os.close(lock_fd)
            raise
        grid = cls(root, opened, meta)
        grid._lock_fd = lock_fd
        return grid

    def unlock(self) -> None:
        """Release the grid's lock and every cell store's lock."""
        for store in self.stores.values():
            store.unlock()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing ---------------------------------------------------------------------------------------------

    @property
    def fsync(self) -> bool:
        return all(s.fsync for s in self.stores.values())

    @fsync.setter
    def fsync(self, value: bool) -> None:
        for store in self.stores.values():
            store.fsync = value

    def clear_tmp(self) -> None:
        for store in self.stores.values():
            store.clear_tmp()

    def recover(self, names: Iterable[str]) -> list[str]:
        """Adopt, in every cell, complete files that lack a manifest line; returns the names now done in all."""
        names = list(names)
        before = self.done_names()
        for store in self.stores.values():
            store.recover(names)
        return sorted(self.done_names() - before)

    def pending(self, names: Iterable[str]) -> tuple[StoreGrid, list[str]]:
        """What a run still has to compute: a grid of the cells that lack some of ``names`` (sharing these stores)
        and the names that lack some cell. The returned grid remembers which cells each name lacks, so
        :meth:`cells_for` asks only for those and :meth:`put` writes only those (a grown grid computes its new cells
        only). An image counts as done in a cell when its manifest line and its file are there."""
        names = list(names)
        done = {cell: {n for n in s.done_names() if s.path(n).is_file()} for cell, s in self.stores.items()}
        lacking = {n: [cell for cell in self.stores if n not in done[cell]] for n in names}
        lacking = {n: cells for n, cells in lacking.items() if cells}
        needed = {cell for cells in lacking.values() for cell in cells}
        sub = StoreGrid(self.root, {cell: s for cell, s in self.stores.items() if cell in needed}, self.meta)
        sub._lacking = lacking
        return sub, [n for n in names if n in lacking]

    def cells_for(self, names: Iterable[str]) -> list[Cell]:
        """The cells to compute for ``names``: those any of them lacks (every cell for a name not looked at)."""
        wanted: set[Cell] = set()
        for name in names:
            wanted.update(self._lacking.get(name, self.stores))
        return [cell for cell in self.stores if cell in wanted]

    def put(
        self, name: str, features: Mapping[Cell, torch.Tensor], original_size: tuple[int, int], image_key: int
    ) -> None:
        """Store image ``name``'s map of each cell it lacks (``{(t, block): [C, h, w]}``) into that cell's store.

        Raises:
            ValueError: a cell is missing, or a map does not fit the store dtype (the image fails).
            StoreFullError: the disk is full.
        """
        cells = self.cells_for([name])
        missing = [c for c in cells if c not in features]
        if missing:
            raise ValueError(f"image {name!r}: no features for cells {missing}")
        # Encoded first: a map that overflows the store dtype fails the image before any cell is written.
        encoded = {cell: self.stores[cell].encode(features[cell]) for cell in cells}
        for cell in cells:
            self.stores[cell].put_encoded(name, encoded[cell], original_size, image_key)

    def record_failure(self, name: str, reason: str) -> None:
        """Log ``name``'s failure in every cell that lacks it."""
        for cell in self.cells_for([name]):
            self.stores[cell].record_failure(name, reason)

    # -- reading ---------------------------------------------------------------------------------------------

    def done_names(self) -> set[str]:
        """Images committed in every cell (with their files present)."""
        done: set[str] | None = None
        for store in self.stores.values():
            names = {n for n in store.done_names() if store.path(n).is_file()}
            done = names if done is None else done & names
        return done or set()

    def failures(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for store in self.stores.values():
            out.update(store.failures())
        return out

    def info(self) -> dict[str, Any]:
        """A summary for ``dift-fast store info GRID``: every cell's image count, failures and identity."""
        return {
            "grid": str(self.root),
            "cells": [
                {
                    "t": t,
                    "block": k,
                    "store": str(s.root.relative_to(self.root)),
                    **{key: value for key, value in s.info().items() if key != "store"},
                }
                for (t, k), s in self.stores.items()
            ],
        }


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / GRID_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a dift-fast store grid (no {GRID_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StoreError(f"{path} cannot be read ({err}): the grid is damaged; it was not changed") from None
    cells = meta.get("cells") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != GRID_FORMAT
        or not isinstance(cells, list)
        or not all(
            isinstance(c, dict)
            and isinstance(c.get("t"), int)
            and isinstance(c.get("block"), int)
            and c.get("store") == cell_name(c["t"], c["block"])
            for c in cells
        )
    ):
        raise StoreError(f"{path} is not a valid store grid description (format {GRID_FORMAT}); it was not changed")
    return meta
