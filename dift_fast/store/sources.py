"""Which images a store run covers, and their names (paths relative to a root; local paths or fsspec URLs)."""

from __future__ import annotations

import glob
import io
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from ..images import ImageError, PreparedImage, open_rgb, prepare_image

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "find_images", "is_url", "load_prepared"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def is_url(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class ImageSource:
    """Images of a run: ``root`` plus sorted ``names`` (posix paths relative to it)."""

    root: str  # local folder or fsspec URL prefix
    names: tuple[str, ...]

    def location(self, name: str) -> str:
        return posixpath.join(self.root, name) if is_url(self.root) else os.path.join(self.root, name)


def find_images(inputs: Sequence[str]) -> ImageSource:
    """One folder (every image below it), or files/globs (named relative to their common folder).

    Raises:
        FileNotFoundError: nothing matched.
    """
    inputs = [str(i) for i in inputs]
    if len(inputs) == 1 and not glob.has_magic(inputs[0]) and _isdir(inputs[0]):
        root = inputs[0].rstrip("/")
        names = _walk(root)
        if not names:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        return ImageSource(root, tuple(sorted(names)))
    paths: list[str] = []
    for item in inputs:
        matched = _glob(item) if glob.has_magic(item) else [item]
        if not matched:
            raise FileNotFoundError(f"{item!r} matches no file")
        paths.extend(matched)
    paths = sorted(set(paths))
    if any(is_url(p) for p in paths):
        schemes = {p.split("://", 1)[0] for p in paths}
        if len(schemes) > 1 or not all(is_url(p) for p in paths):
            raise ValueError(f"inputs mix locations ({sorted(schemes)}); give images from one filesystem")
        scheme = schemes.pop()
        rest = posixpath.commonpath([posixpath.dirname(p.split("://", 1)[1]) for p in paths])
        root = f"{scheme}://{rest}"
        names = [p[len(root) + 1 :] for p in paths]
    else:
        paths = [os.path.abspath(p) for p in paths]
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
        names = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    return ImageSource(root, tuple(sorted(names)))


def _isdir(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.isdir(p)
    return os.path.isdir(path)


def _walk(root: str) -> list[str]:
    if is_url(root):
        fs, p = _fs(root)
        proto = root.split("://", 1)[0]
        files = [f if "://" in f else f"{proto}://{f}" for f in fs.find(p)]
        return [f[len(root) + 1 :] for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."):
                out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return out


def _glob(pattern: str) -> list[str]:
    if is_url(pattern):
        fs, p = _fs(pattern)
        proto = pattern.split("://", 1)[0]
        return [f if "://" in f else f"{proto}://{f}" for f in fs.glob(p)]
    return glob.glob(pattern, recursive=True)


def _fs(url: str):  # -> (fsspec filesystem, path)
    import fsspec

    return fsspec.core.url_to_fs(url)


def load_prepared(source: ImageSource, name: str, image_size: tuple[int, int] | None) -> PreparedImage:
    """Read and preprocess image ``name`` (raises :class:`ImageError` with the reason)."""
    where = source.location(name)
    if not is_url(where):
        return prepare_image(where, image_size, name=name)
    try:
        fs, p = _fs(where)
        with fs.open(p, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as err:
        raise ImageError(name, f"cannot read {where} ({err})") from None
    return prepare_image(open_rgb(io.BytesIO(data), name), image_size, name=name)
