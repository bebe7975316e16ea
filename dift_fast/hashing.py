"""Content hashes of weight files and model folders (sha256), cached so a second call reads no weights.

A file's hash is cached by (resolved path, size, mtime_ns, ctime_ns, inode) in memory and in a small JSON file
under ``cache_root()``; any change to the file changes one of these and forces a re-hash (ctime too: a writer that
resets the mtime with ``os.utime`` still changes the ctime, which no user call can set back). Files modified within the last
few seconds are hashed but not cached (a later write in the same mtime tick would otherwise go unnoticed, the
"racy" case git also guards against). The JSON cache is advisory: a corrupt, unreadable or concurrently rewritten
one only costs a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .cache import cache_root

__all__ = ["WEIGHT_SUFFIXES", "file_sha256", "files_sha256", "folder_sha256", "hash_cache_path"]

# Suffixes of the weight files a model folder's identity is made of.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

_CHUNK = 8 << 20  # bytes per read while hashing
_RACY_NS = 3_000_000_000  # files younger than this (mtime vs. now) are not cached
_MAX_ENTRIES = 4096  # the JSON cache keeps at most this many files (oldest dropped first)
_CACHE_VERSION = 2  # 2: ctime_ns is part of the key
_memory: dict[str, dict[str, Any]] = {}


def hash_cache_path() -> Path:
    """The JSON file holding cached file hashes."""
    return cache_root() / "hashes" / "sha256.json"


def _stat_key(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}


def _write_cache(path_key: str, entry: dict[str, Any]) -> None:
    from .atomic import atomic_path

    files = _read_cache()
    files.pop(path_key, None)
    files[path_key] = entry
    if len(files) > _MAX_ENTRIES:
        files = dict(list(files.items())[-_MAX_ENTRIES:])
    try:
        with atomic_path(hash_cache_path()) as tmp:
            tmp.write_text(json.dumps({"version": _CACHE_VERSION, "files": files}))
    except OSError:
        pass  # a read-only or full cache folder only costs a re-hash next time


def _matches(entry: dict[str, Any] | None, key: dict[str, int]) -> bool:
    if entry is None or any(entry.get(k) != v for k, v in key.items()):
        return False
    digest = entry.get("sha256")
    return isinstance(digest, str) and len(digest) == 64


def _cached(path_key: str, key: dict[str, int]) -> str | None:
    """The cached digest of ``path_key`` if its entry (memory first, then the JSON file) matches ``key``."""
    entry = _memory.get(path_key)
    if not _matches(entry, key):
        entry = _read_cache().get(path_key)
        if not _matches(entry, key):
            return None
        _memory[path_key] = entry
    return entry["sha256"]


def file_sha256(path: str | os.PathLike, use_cache: bool = True) -> str:
    """sha256 (hex) of a file's bytes, streamed; cached by (resolved path, size, mtime_ns, ctime_ns, inode).

    Args:
        path: the file (symlinks are followed: the target's bytes are hashed).
        use_cache: look up and record the hash in the cache (memory and JSON under ``cache_root()``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        RuntimeError: the file changed while it was being read (e.g. a download still running).
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"cannot hash {path}: not a file")
    path_key = str(resolved)
    before = _stat_key(resolved.stat())
    if use_cache and (digest := _cached(path_key, before)) is not None:
        return digest
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    after = _stat_key(resolved.stat())
    if after != before:
        raise RuntimeError(f"{path} changed while it was being hashed ({before} -> {after}); retry once it is complete")
    digest = h.hexdigest()
    if use_cache and time.time_ns() - before["mtime_ns"] > _RACY_NS:
        entry = {**before, "sha256": digest}
        _memory[path_key] = entry
        _write_cache(path_key, entry)
    return digest


def files_sha256(files: Iterable[str | os.PathLike], root: str | os.PathLike, use_cache: bool = True) -> str:
    """One sha256 (hex) over several files: their paths relative to ``root`` (``/``-separated) and content hashes.

    Independent of the order ``files`` come in; renaming or changing any file changes it.

    Raises:
        ValueError: ``files`` is empty, names a file twice, or names one outside ``root``.
    """
    root_path = Path(root).expanduser()
    entries: dict[str, str] = {}
    for file in files:
        file_path = Path(file).expanduser()
        if not file_path.is_absolute():
            file_path = root_path / file_path
        try:
            rel = os.path.relpath(file_path, root_path)
        except ValueError:  # another drive (Windows)
            rel = ".."
        if rel == ".." or rel.startswith(".." + os.sep):
            raise ValueError(f"{file} is not inside {root}")
        rel = rel.replace(os.sep, "/")
        if rel in entries:
            raise ValueError(f"{rel} is listed twice")
        entries[rel] = file_sha256(file_path, use_cache=use_cache)
    if not entries:
        raise ValueError(f"no files to hash under {root}")
    h = hashlib.sha256()
    for rel in sorted(entries):
        h.update(f"{rel}\0{entries[rel]}\n".encode())
    return h.hexdigest()


def folder_sha256(folder: str | os.PathLike, suffixes: Iterable[str] = WEIGHT_SUFFIXES, use_cache: bool = True) -> str:
    """sha256 (hex) of a model folder's weight files (every file below ``folder`` ending in one of ``suffixes``).

    Hidden files and folders (``.git``, ``.cache``, ...) are skipped. Symlinked files (a Hugging Face cache
    snapshot) are hashed by their targets' bytes under their names in the folder.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
        ValueError: no weight file was found.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"cannot hash model folder {folder}: not a folder")
    suffixes = tuple(s.lower() for s in suffixes)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [
            Path(dirpath) / name
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(suffixes) and (Path(dirpath) / name).is_file()
        ]
    if not files:
        raise ValueError(f"model folder {folder} holds no weight file (looked for {', '.join(suffixes)})")
    return files_sha256(files, root, use_cache=use_cache)
