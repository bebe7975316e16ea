"""`FeatureStore`: one safetensors file per image in a hashed folder layout, plus append-only manifests.

Layout of a store folder::

    store.json                          identity (the feature identity, store dtype, PCA) and config, written once
    pca.safetensors                     optional PCA (mean, components, explained variance), written once
    features/ab/cd/abcd....safetensors  one image: tensor "features" [C, h, w], its name, size and noise key, and
                                        a sha256 over all of these (checked on every read)
    manifests/<writer>.jsonl            one line per committed image, appended after its file is in place
    failures/<writer>.jsonl             one line per image that could not be used, with the reason
    tmp/                                files being written (same filesystem, so the final rename is atomic)
    writer.lock                         flock held by the process that coordinates a run

A feature file is written under tmp/, flushed to disk and renamed into place, so it either exists complete or
not at all: killing a writer loses at most the images in flight, and readers never see a partial file. Each writer
process appends only to its own manifest and failure log; a torn last line (a writer killed mid-append) is
ignored, and a feature file whose manifest line is missing is adopted by the next run (:meth:`recover`).

A writer takes the lock before it changes anything (``--overwrite`` included), and a folder that is neither empty
nor a store is never written to or deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import DISK_FULL_ERRNOS, write_atomic
from .identity import StoreDtype, describe_diff
from .pca import Pca

__all__ = [
    "FORMAT",
    "FeatureStore",
    "StoreConfigError",
    "StoreCorruptError",
    "StoreEntry",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
]

FORMAT = "dift-fast-store/2"  # /2: feature files carry a sha256; /1 stores are still read (unverified)
READABLE_FORMATS = ("dift-fast-store/1", FORMAT)
# A temporary file of dift_fast.atomic: ".<target>.<32 hex digits>.tmp".
_ATOMIC_TEMP = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
_TORCH_STORE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class StoreError(RuntimeError):
    """A store that cannot be used as asked."""


class StoreConfigError(StoreError):
    """The store was made with different settings than this run's."""


class StoreLockedError(StoreError):
    """Another process is writing to the store."""


class StoreFullError(StoreError):
    """The disk filled up; the store is consistent and the run can be repeated once there is space."""


class StoreCorruptError(StoreError):
    """A stored feature file is damaged (its checksum does not match, or it cannot be parsed)."""

    def __init__(self, name: str, path: Path, reason: str) -> None:
        super().__init__(
            f"image {name!r}: feature file {path} is damaged ({reason}); delete that file and rerun the extraction "
            "to recompute the image"
        )
        self.name, self.path = name, path


@dataclass(frozen=True)
class StoreEntry:
    """One committed image as the manifests record it."""

    name: str  # path relative to the extraction root (posix separators)
    file: str  # feature file, relative to the store folder
    shape: tuple[int, int, int]  # [C, h, w] as stored
    original_size: tuple[int, int]  # (width, height) before resizing
    image_key: int  # noise key (spec §3)


def name_hash(name: str) -> str:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=8).hexdigest()


class FeatureStore:
    """A feature store folder. Open it with :meth:`open` (read) or :meth:`create_or_open` (write)."""

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.store_dtype: StoreDtype = meta["identity"]["store_dtype"]
        self._pca: Pca | None = None
        self._writer: str | None = None
        self._lock_fd: int | None = None
        self.fsync = True

    # -- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike) -> FeatureStore:
        """Open an existing store for reading (safe while a writer runs)."""
        root = Path(root)
        meta_path = root / "store.json"
        if not meta_path.is_file():
            if (root / "grid.json").is_file():  # a grid (store/grid.py): one store per (t, block) cell
                cells = sorted(p.name for p in root.iterdir() if (p / "store.json").is_file())
                raise FileNotFoundError(f"{root} is a store grid, a folder of one feature store per (t, block) cell; "
                                        f"open one cell's store ({', '.join(cells[:6])}{' ...' if len(cells) > 6 else ''}"
                                        ", e.g. STORE/<cell>), or StoreGrid.open for all")
            raise FileNotFoundError(f"{root} is not a dift-fast feature store (no store.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise StoreError(f"{meta_path} cannot be read ({err}): the store is damaged; it was not changed") from None
        if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise StoreError(f"{root}: unknown store format {found!r}, expected {FORMAT}")
        identity = meta.get("identity")
        if not isinstance(identity, dict) or identity.get("store_dtype") not in _TORCH_STORE_DTYPES:
            raise StoreError(f"{meta_path} has no valid identity: the store is damaged; it was not changed")
        return cls(root, meta)

    @classmethod
    def create_or_open(
        cls,
        root: str | os.PathLike,
        identity: dict[str, Any],
        config: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
        must_exist: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> FeatureStore:
        """Open ``root`` for writing if its identity equals ``identity``; create it if it does not exist.

        The returned store holds the writer lock (:meth:`unlock` releases it). The lock is taken before anything
        is written or deleted, so ``overwrite`` never wipes the store of a writer that is still running.

        Raises:
            StoreLockedError: another process is writing to the store.
            StoreConfigError: the store was made with other settings (pass ``overwrite=True`` to start afresh).
            StoreError: ``must_exist`` and there is no store, or ``root`` is a non-empty folder that is not a
                store (refused even with ``overwrite``: nothing in it is deleted).
            StoreFullError: the disk filled up while creating the store; the folder is left as it was.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"--out {root} is a file, not a store folder; choose another --out")
        if not (root / "store.json").is_file():
            if must_exist:
                raise StoreError(f"--resume: {root} is not an existing feature store; drop --resume to create it")
            refuse_foreign_folder(root, "a feature store", " (--overwrite only replaces a feature store)")
        created_root = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_lock(root)
        except OSError as err:
            if created_root:
                _remove_leftovers(root, True)
            _raise_if_full(err, root, "creating the store")
            raise
        try:
            # Everything below runs under the lock: what another writer did before we got it is seen here.
            if (root / "store.json").is_file():
                store = cls.open(root)
                if store.meta["identity"] == identity and not overwrite:
                    store._lock_fd = lock_fd
                    return store
                if store.meta["identity"] != identity and not overwrite:
                    diff = describe_diff(store.meta["identity"], identity)
                    raise StoreConfigError(
                        f"store {root} was made with different settings ({diff}); rerun with the store's settings, "
                        "use another --out, or pass --overwrite to delete it and start a new one"
                    )
                store.delete_contents()
            elif must_exist:
                raise StoreError(f"--resume: {root} is not an existing feature store; drop --resume to create it")
            else:
                refuse_foreign_folder(root, "a feature store", " (--overwrite only replaces a feature store)")
            meta = {"format": FORMAT, "identity": identity, "config": config or {}, "created": time.time(),
                    **(extra or {})}
            try:
                write_atomic(root / "store.json", json.dumps(meta, indent=1, sort_keys=True), tmp_dir=root / "tmp")
            except OSError as err:
                _remove_leftovers(root, created_root)
                _raise_if_full(err, root, "creating the store")
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(root, meta)
        store._lock_fd = lock_fd
        return store

    def delete_contents(self) -> None:
        """Remove everything a store holds (used by ``--overwrite``, under the writer lock); other files stay."""
        import shutil

        for sub in ("features", "manifests", "failures", "tmp"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for f in ("store.json", "pca.safetensors"):
            (self.root / f).unlink(missing_ok=True)

    # -- writer session ---------------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the store's writer lock (released when the process exits, even by SIGKILL)."""
        if self._lock_fd is None:
            self._lock_fd = _take_lock(self.root)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clear_tmp(self) -> None:
        """Delete files left in tmp/ by killed writers; only call while holding the lock, before workers start."""
        tmp = self.root / "tmp"
        if tmp.is_dir():
            for f in tmp.iterdir():
                f.unlink(missing_ok=True)

    @property
    def writer_id(self) -> str:
        """This process's name in manifests/ and failures/ (new per process, so appends never interleave)."""
        if self._writer is None:
            self._writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return self._writer

    # -- layout ----------------------------------------------------------------------------------------------

    def relpath(self, name: str) -> str:
        h = name_hash(name)
        return f"features/{h[:2]}/{h[2:4]}/{h}.safetensors"

    def path(self, name: str) -> Path:
        return self.root / self.relpath(name)

    @property
    def pca(self) -> Pca | None:
        if self._pca is None and self.meta["identity"]["pca_dim"]:
            p = self.root / "pca.safetensors"
            if p.is_file():
                self._pca = Pca.load(p)
        return self._pca

    def save_pca(self, pca: Pca) -> None:
        pca.save(self.root / "pca.safetensors", self.root / "tmp")
        self._pca = pca

    def encode(self, features: torch.Tensor) -> torch.Tensor:  # [C, h, w] -> [C', h, w] in the store dtype
        """What the store keeps for a raw feature map: PCA-projected if configured, cast to the store dtype."""
        if self.meta["identity"]["pca_dim"]:
            if self.pca is None:
                raise StoreError(f"{self.root}: the store uses PCA but pca.safetensors is missing")
            features = self.pca.project(features)
        out = features.detach().to("cpu", _TORCH_STORE_DTYPES[self.store_dtype]).contiguous()
        if not torch.isfinite(out).all():
            raise ValueError(f"features do not fit in {self.store_dtype} (overflow); use --dtype-store fp32")
        return out

    # -- writing ---------------------------------------------------------------------------------------------

    def put(self, name: str, features: torch.Tensor, original_size: tuple[int, int], image_key: int) -> StoreEntry:
        """Store the raw features [C, h, w] of image ``name`` atomically, then record it in the manifest.

        Raises:
            StoreFullError: the disk is full; nothing partial is left behind.
        """
        return self.put_encoded(name, self.encode(features), original_size, image_key)

    def put_encoded(self, name: str, data: torch.Tensor, original_size: tuple[int, int], image_key: int) -> StoreEntry:
        """:meth:`put` for a map already in the stored form (:meth:`encode`): written atomically, then recorded."""
        from safetensors.torch import save as st_save

        meta = {"format": FORMAT, "name": name, "original_size": json.dumps(list(original_size)),
                "image_key": str(image_key)}
        meta["sha256"] = _feature_checksum(data, meta)
        blob = st_save({"features": data}, metadata=meta)
        rel = self.relpath(name)
        try:
            write_atomic(self.root / rel, blob, tmp_dir=self.root / "tmp", fsync=self.fsync)
        except OSError as err:
            self._raise_if_full(err, name)
            raise
        entry = StoreEntry(name, rel, tuple(data.shape), tuple(original_size), int(image_key))
        self._append("manifests", _entry_to_json(entry))
        return entry

    def record_failure(self, name: str, reason: str) -> None:
        """Append ``name`` and why it failed to this writer's failure log."""
        self._append("failures", {"name": name, "reason": reason, "time": time.time()})

    def _append(self, folder: str, record: dict[str, Any]) -> None:
        d = self.root / folder
        d.mkdir(exist_ok=True)
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(d / f"{self.writer_id}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write of one line: readers see whole lines (a torn one only on a crash)
            finally:
                os.close(fd)
        except OSError as err:
            self._raise_if_full(err, record["name"])
            raise

    def _raise_if_full(self, err: OSError, name: str) -> None:
        _raise_if_full(err, self.root, f"writing {name!r}")

    def recover(self, names: Iterable[str]) -> list[str]:
        """Adopt complete feature files of ``names`` that lack a manifest line (writer killed in between)."""
        done = self.done_names()
        adopted = []
        for name in names:
            if name in done or not self.path(name).is_file():
                continue
            try:
                entry = self._read_entry(name)
            except StoreError:  # a damaged file (e.g. disk error): recompute it
                self.path(name).unlink(missing_ok=True)
                continue
            self._append("manifests", _entry_to_json(entry))
            adopted.append(name)
        return adopted

    # -- reading ---------------------------------------------------------------------------------------------

    def entries(self) -> dict[str, StoreEntry]:
        """All committed images, by name (reads only the manifests)."""
        out = {}
        for rec in _read_jsonl_dir(self.root / "manifests"):
            try:
                e = StoreEntry(rec["name"], rec["file"], tuple(int(v) for v in rec["shape"]),
                               tuple(int(v) for v in rec["original_size"]), int(rec["image_key"]))
            except (KeyError, TypeError, ValueError):  # not a line this format writes: damaged, skipped
                continue
            if not isinstance(e.name, str) or e.file != self.relpath(e.name):
                continue  # a line naming another file than the name's own: never trusted
            out[e.name] = e
        return out

    def done_names(self) -> set[str]:
        return set(self.entries())

    def names(self) -> list[str]:
        return sorted(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def __contains__(self, name: str) -> bool:
        return self.path(name).is_file()

    def failures(self) -> dict[str, str]:
        """Images that could not be used and why (latest reason; images stored since then are left out)."""
        recs = [r for r in _read_jsonl_dir(self.root / "failures")
                if isinstance(r.get("name"), str) and isinstance(r.get("time", 0), (int, float))]
        recs.sort(key=lambda r: r.get("time", 0))
        done = self.done_names()
        return {r["name"]: str(r.get("reason")) for r in recs if r["name"] not in done}

    def get(self, name: str) -> torch.Tensor:  # [C', h, w] in the store dtype
        """The stored features of one image, read from its own file only and checked against its checksum.

        Raises:
            KeyError: the image is not in the store.
            StoreCorruptError: its file is damaged (names the image and the file).
        """
        path = self.path(name)
        if not path.is_file():
            raise KeyError(f"image {name!r} is not in store {self.root}")
        return self._read(name)[0]

    def _read(self, name: str) -> tuple[torch.Tensor, dict[str, str]]:
        """Tensor and metadata of ``name``'s file, verified (the checksum; the name it holds)."""
        from safetensors import safe_open

        path = self.path(name)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                data = f.get_tensor("features")
        except FileNotFoundError:
            raise KeyError(f"image {name!r} is not in store {self.root}") from None
        except Exception as err:  # safetensors raises its own errors on a damaged header or size
            raise StoreCorruptError(name, path, f"cannot be parsed: {err}") from None
        if meta.get("name") != name:
            raise StoreCorruptError(name, path, f"it holds {meta.get('name')!r}, not {name!r}")
        expected = meta.get("sha256")
        if expected is None:
            if self.meta.get("format") == FORMAT:  # /1 stores had no checksums; in a /2 store it is damage
                raise StoreCorruptError(name, path, "its checksum is missing")
        elif _feature_checksum(data, meta) != expected:
            raise StoreCorruptError(name, path, "checksum mismatch: its bytes changed after they were written")
        return data, meta

    def _read_entry(self, name: str) -> StoreEntry:
        data, meta = self._read(name)
        try:
            original_size = tuple(int(v) for v in json.loads(meta["original_size"]))
            key = int(meta["image_key"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreCorruptError(name, self.path(name), f"bad metadata ({err})") from None
        return StoreEntry(name, self.relpath(name), tuple(data.shape), original_size, key)

    def info(self) -> dict[str, Any]:
        """A summary for ``dift-fast store info``."""
        entries = self.entries()
        out = {"store": str(self.root), "images": len(entries), "failed": len(self.failures()),
               "identity": self.meta["identity"]}
        if self.pca is not None:
            out["pca_explained_variance"] = float(self.pca.explained_variance_ratio.sum())
        return out


def refuse_foreign_folder(root: Path, kind: str, hint: str = "") -> None:
    """Refuse to create ``kind`` (a store, a grid) in a folder holding anything but what a failed creation leaves
    behind: nothing the user owns is written over or deleted."""
    if not root.is_dir():
        return
    foreign = sorted(p.name for p in root.iterdir() if not _left_by_creation(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise StoreError(
            f"{root} exists, is not empty ({shown}) and is not {kind}; nothing was written or deleted there. "
            f"Choose another --out{hint}"
        )


def _left_by_creation(path: Path) -> bool:
    """What a failed store creation may leave behind: an empty ``writer.lock``, a ``tmp/`` of our temporary files."""
    if path.name == "writer.lock":
        return path.is_file() and not path.is_symlink() and path.stat().st_size == 0
    if path.name == "tmp" and path.is_dir() and not path.is_symlink():
        return all(_ATOMIC_TEMP.match(p.name) for p in path.iterdir())
    return False


def _take_lock(root: Path) -> int:
    """flock ``root/writer.lock`` (exclusive, non-blocking); returns the descriptor that holds it."""
    fd = os.open(root / "writer.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"another process is writing to {root}; wait for it or stop it") from None
    return fd


def _remove_leftovers(root: Path, created_root: bool) -> None:
    """After a failed creation: remove what it made (``tmp/``, ``writer.lock``, and ``root`` if it made it)."""
    import shutil

    shutil.rmtree(root / "tmp", ignore_errors=True)
    (root / "writer.lock").unlink(missing_ok=True)
    if created_root:
        try:
            root.rmdir()  # only when empty: never anything the user put there meanwhile
        except OSError:
            pass


def _raise_if_full(err: OSError, root: Path, doing: str) -> None:
    if err.errno in DISK_FULL_ERRNOS:
        state = ("nothing was left there" if doing == "creating the store" else
                 "the store is consistent")
        raise StoreFullError(
            f"disk full while {doing} in {root} ({os.strerror(err.errno)}); {state}: free some space (or use "
            "--dtype-store fp16 / --pca) and rerun the same command"
        ) from err


def _feature_checksum(data: torch.Tensor, meta: dict[str, str]) -> str:
    """sha256 over a stored map's dtype, shape and bytes and the metadata that goes with it."""
    h = hashlib.sha256()
    header = {k: meta.get(k) for k in ("format", "name", "original_size", "image_key")}
    h.update(json.dumps([str(data.dtype), list(data.shape), header], sort_keys=True).encode())
    flat = data.contiguous().view(-1)
    h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")  # hashed in place, no copy
    return h.hexdigest()


def _entry_to_json(e: StoreEntry) -> dict[str, Any]:
    return {"name": e.name, "file": e.file, "shape": list(e.shape), "original_size": list(e.original_size),
            "image_key": str(e.image_key)}


def _read_jsonl_dir(folder: Path) -> Iterator[dict[str, Any]]:
    if not folder.is_dir():
        return
    for f in sorted(folder.glob("*.jsonl")):
        data = f.read_bytes()
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is a line still being written
            try:
                rec = json.loads(line)
            except ValueError:  # torn by a crash mid-append
                continue
            if isinstance(rec, dict):
                yield rec
