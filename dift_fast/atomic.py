"""Atomic writes: a reader sees the old file or the whole new one, never a part, and nothing planted can redirect it.

Every file dift-fast writes for the user (feature files, stores, indexes, exports, caches, the tiny model) goes
through here:

1. a temporary file named ``.<target>.<128 random bits>.tmp`` is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``
   in the target's folder (or in ``tmp_dir``, which must be on the same filesystem). ``O_EXCL`` refuses any
   existing name, so a symlink planted under a predictable or even a guessed name is never followed;
2. the data is written and the file fsynced;
3. the file is renamed over the target (a rename replaces a symlink at the target itself, it never writes through
   it) and the folder is fsynced, so the new name survives a power loss.

The file is created with mode 0o666 less the process umask, like any file the user creates (not ``mkstemp``'s
0600). When anything fails the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # the write failed for want of space (or quota)

__all__ = ["DISK_FULL_ERRNOS", "atomic_folder", "atomic_path", "write_atomic"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# Filesystems that cannot fsync a folder say so with one of these; the data itself was fsynced.
_NO_DIR_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES)


def temp_name(target_name: str) -> str:
    """``.<target_name>.<32 hex digits>.tmp``: hidden, names its target, and cannot be predicted."""
    return f".{target_name}.{secrets.token_hex(16)}.tmp"


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the filesystem allows it."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def _create_temp(target: Path, tmp_dir: str | os.PathLike | None) -> tuple[Path, int]:
    folder = Path(tmp_dir) if tmp_dir is not None else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / temp_name(target.name)
    return tmp, os.open(tmp, _CREATE_FLAGS, 0o666)  # the umask applies


def _commit(tmp: Path, target: Path, fsync: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    if fsync:
        fsync_folder(target.parent)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # unlinks a name, never what a symlink points to


def write_atomic(
    target: str | os.PathLike,
    data: bytes | bytearray | memoryview | str,
    *,
    tmp_dir: str | os.PathLike | None = None,
    fsync: bool = True,
) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``target`` atomically; returns the target path.

    Args:
        target: the file to create or replace (its folder is created when missing).
        data: the whole content.
        tmp_dir: where the temporary file is created (default: the target's folder); same filesystem as the target.
        fsync: flush the file and the folder to disk (power-loss safe); False only for scratch data.
    """
    target = Path(target)
    view = memoryview(data.encode() if isinstance(data, str) else data).cast("B")
    tmp, fd = _create_temp(target, tmp_dir)
    committed = False
    try:
        try:
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, target, fsync)
        committed = True
    finally:
        if not committed:
            _discard(tmp)
    return target


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike, *, tmp_dir: str | os.PathLike | None = None, fsync: bool = True
) -> Iterator[Path]:
    """A new, empty temporary file for writers that take a path; renamed over ``target`` when the block succeeds.

    The writer writes the whole file at the yielded path. It may also replace it (safetensors, for one, writes its
    own temporary file, mode 0600, and renames it over the path): what stands at the temporary name when the block
    ends must be a regular file, never a symlink, and it gets the mode of the file created here (0o666 less the
    umask). When the block raises, the temporary file is removed and ``target`` is untouched.

    Example:
        >>> with atomic_path("feats.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, str(tmp))
    """
    target = Path(target)
    tmp, fd = _create_temp(target, tmp_dir)
    committed = False
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 less the umask, as the kernel applied it
        os.close(fd)
        fd = -1
        yield tmp
        try:
            fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RuntimeError(
                    f"{tmp} was replaced by a symlink while it was written; {target} was not changed"
                ) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuntimeError(f"{tmp} is not a regular file after it was written; {target} was not changed")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        if fsync:
            os.fsync(fd)
        _commit(tmp, target, fsync)
        committed = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not committed:
            _discard(tmp)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """A new, empty temporary folder beside ``target``; renamed to ``target`` when the block succeeds.

    For content that is only valid as a whole (a model folder). The folder is created with mode 0o777 less the
    umask. The rename cannot replace a non-empty folder: when ``target`` appeared meanwhile (another process built
    it), :class:`FileExistsError` is raised and the temporary folder is removed; so it is when the block raises.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / temp_name(target.name)
    os.mkdir(tmp, 0o777)  # fails on any existing name, a planted symlink included
    committed = False
    try:
        yield tmp
        if fsync:
            for root, _, files in os.walk(tmp):
                for name in files:
                    if os.path.islink(os.path.join(root, name)):
                        continue
                    fd = os.open(os.path.join(root, name), os.O_RDONLY | _NOFOLLOW)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                fsync_folder(root)
        try:
            os.rename(tmp, target)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, f"{target} already exists", str(target)) from None
            raise
        committed = True
        if fsync:
            fsync_folder(target.parent)
    finally:
        if not committed:
            shutil.rmtree(tmp, ignore_errors=True)
