"""Crash-safe, resumable appends of groups to an HDF5 file in hloc's layout.

HDF5 has no journal: a process killed while it writes can leave the whole file unreadable, not only the group it
was writing. So the file the user asked for is never opened for writing in place:

* new groups go to *part files* beside it (``.NAME.parts/``), each written under a ``.tmp`` name and renamed once it
  is closed (every ``rotate_seconds``), so a part without ``.tmp`` is a complete, closed HDF5 file;
* :meth:`H5Journal.commit` copies the file to a temporary, copies every part's groups into it, flushes it to disk
  and renames it over the file, then deletes the parts.

A crash loses at most the open part (the last ``rotate_seconds`` of work); the file always holds a complete
earlier state, and the next run first merges the complete parts a crashed run left. Each file records the
settings it was made with (attribute ``dift_fast_identity``); a run with other settings is refused instead of
mixing incompatible groups. One writer per file at a time (an flock on ``.NAME.lock``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import fsync_folder
from ..identity import describe_diff

__all__ = ["IDENTITY_ATTR", "H5Journal", "H5SettingsError", "import_h5py", "leaf_groups"]

IDENTITY_ATTR = "dift_fast_identity"
logger = logging.getLogger(__name__)


class H5SettingsError(ValueError):
    """An existing file (or an interrupted run's parts) was made with other settings, or not by dift-fast."""


def import_h5py() -> Any:
    """h5py, or a :class:`~dift_fast.extras.MissingExtraError` naming the extra that installs it."""
    from ..extras import import_extra

    return import_extra("h5py", "hloc-style HDF5 files", extra="colmap")


def leaf_groups(fd: Any) -> list[str]:
    """Names of the groups that hold datasets, as hloc's ``list_h5_names`` lists them (``a/b.jpg`` when nested)."""
    h5py = import_h5py()
    names: set[str] = set()

    def visit(_: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(obj.parent.name.strip("/"))

    fd.visititems(visit)
    return sorted(names)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class H5Journal:
    """Appends groups of datasets to ``path`` so that a crash never damages what an earlier commit wrote.

    Use as a context manager: entering takes the lock, checks the file's settings and merges parts left by a
    crashed run; leaving commits (also after an exception, so finished work is kept).

    Args:
        path: the HDF5 file (created if absent).
        identity: JSON-able settings the groups depend on; an existing file with other settings is refused.
        required: datasets every group must hold; a group lacking one is never merged.
        label: how error messages name the file (e.g. ``"--matches"``).
        rotate_seconds: close the open part and start a new one after this long (bounds what a crash loses).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        identity: Mapping[str, Any],
        *,
        required: Iterable[str],
        label: str,
        rotate_seconds: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(dict(identity), sort_keys=True))  # normalised: tuples -> lists
        self.required = tuple(required)
        self.label = label
        self.rotate_seconds = rotate_seconds
        self.parts_dir = self.path.with_name(f".{self.path.name}.parts")
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock_fd: int | None = None
        self._names: set[str] = set()
        self._part: Any = None
        self._part_tmp: Path | None = None
        self._part_started = 0.0

    # -- session ---------------------------------------------------------------------------------------------

    def __enter__(self) -> H5Journal:
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.commit()
        except Exception:
            if exc_type is None:
                raise
            logger.exception("could not commit %s after an error; the next run merges its parts", self.path)
        finally:
            self._unlock()

    def open(self) -> None:
        """Lock, check the file's settings, clear what crashed runs left and merge their complete parts."""
        h5py = import_h5py()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another process is writing {self.path}; wait for it to finish") from None
        self._lock_fd = fd
        try:
            if self.path.exists():
                try:
                    with h5py.File(self.path, "r") as f:
                        self._check_identity(f, self.path)
                        self._names = set(leaf_groups(f))
                except OSError as err:
                    raise ValueError(
                        f"{self.label} {self.path} is not a readable HDF5 file ({err}); move it away or choose "
                        "another path (it is left untouched)"
                    ) from None
            for stale in self.path.parent.glob(f".{self.path.name}.merge*"):
                stale.unlink(missing_ok=True)  # a commit killed before its rename
            if self.parts_dir.is_dir():
                for tmp in self.parts_dir.glob("*.tmp"):
                    tmp.unlink(missing_ok=True)  # a part that was still open when its writer died
                self.commit()
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_identity(self, f: Any, where: Path) -> None:
        raw = f.attrs.get(IDENTITY_ATTR)
        if raw is None:
            raise H5SettingsError(
                f"{self.label} {where} was not written by dift-fast match-pairs (it has no '{IDENTITY_ATTR}' "
                "attribute); choose another path (the file is left untouched)"
            )
        old = json.loads(raw)
        if old != self.identity:
            raise H5SettingsError(
                f"{self.label} {where} was made with other settings ({describe_diff(old, self.identity, old_name='file has')}); rerun "
                "with those settings, or write to another path (the file is left untouched)"
            )

    # -- writing ---------------------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def names(self) -> set[str]:
        """Groups in the file and in this run's parts."""
        return set(self._names)

    def write(self, name: str, datasets: Mapping[str, np.ndarray]) -> None:
        """Add group ``name`` (``a/b`` makes nested groups, as hloc does) with ``datasets``; replaces nothing."""
        missing = [k for k in self.required if k not in datasets]
        if missing:
            raise ValueError(f"group {name!r} lacks datasets {missing}")
        if name in self._names:
            raise ValueError(f"group {name!r} is already in {self.path}")
        if self._part is None:
            self._open_part()
        try:
            grp = self._part.create_group(name)
            for key, value in datasets.items():
                grp.create_dataset(key, data=value)
            self._part.flush()
        except BaseException:
            if name in self._part:
                del self._part[name]  # never leave half a group behind
            raise
        self._names.add(name)
        if time.monotonic() - self._part_started >= self.rotate_seconds:
            self._close_part()

    def _open_part(self) -> None:
        h5py = import_h5py()
        self.parts_dir.mkdir(exist_ok=True)
        self._part_tmp = self.parts_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.h5.tmp"
        self._part = h5py.File(self._part_tmp, "w")
        self._part.attrs[IDENTITY_ATTR] = json.dumps(self.identity, sort_keys=True)
        self._part_started = time.monotonic()

    def _close_part(self) -> None:
        if self._part is None:
            return
        self._part.close()
        self._part = None
        _fsync_path(self._part_tmp)
        os.replace(self._part_tmp, self._part_tmp.with_suffix(""))  # x.h5.tmp -> x.h5: complete
        self._part_tmp = None

    def commit(self) -> None:
        """Merge every complete part into the file (temporary copy, fsync, rename), then delete the parts."""
        self._close_part()
        parts = sorted(self.parts_dir.glob("*.h5")) if self.parts_dir.is_dir() else []
        if not parts:
            return
        h5py = import_h5py()
        tmp = self.path.with_name(f".{self.path.name}.merge{os.getpid()}")
        try:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "a") as dst:
                dst.attrs[IDENTITY_ATTR] = json.dumps(self.identity, sort_keys=True)
                have = set(leaf_groups(dst))
                for part in parts:
                    with h5py.File(part, "r") as src:
                        self._check_identity(src, part)
                        for name in leaf_groups(src):
                            if name in have or any(k not in src[name] for k in self.required):
                                continue
                            parent, base = posixpath.split(name)
                            src.copy(src[name], dst.require_group(parent) if parent else dst, name=base)
                            have.add(name)
                self._names = have
            _fsync_path(tmp)
            os.replace(tmp, self.path)
            fsync_folder(self.path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        for part in parts:
            part.unlink()
        try:
            self.parts_dir.rmdir()
        except OSError:
            pass
