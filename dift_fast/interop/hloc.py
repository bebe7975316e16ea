"""hloc's file conventions: pairs files, pair names in ``matches.h5``, and keypoints for ``features.h5``.

Layouts (as hloc's ``extract_features`` / ``match_features`` write them and ``hloc.utils.io`` reads them):

* pairs file: one ``name0 name1`` per line, names relative to the image folder (``/`` for sub-folders);
* ``features.h5``: one group per image name (nested groups for ``/``) with ``keypoints [N, 2]`` (x, y in the
  original image, 0-based pixel centres: the top-left pixel's centre is (0, 0)), ``descriptors [D, N]``,
  ``scores [N]`` and ``image_size [2]`` (width, height);
* ``matches.h5``: one group per pair, named ``names_to_pair(name0, name1)``, with ``matches0 [N0]`` (index into
  image 1's keypoints, −1 when unmatched; hloc writes int16) and ``matching_scores0 [N0]`` (hloc writes float16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .h5journal import import_h5py

__all__ = [
    "GridKeypoints",
    "H5Keypoints",
    "KeypointError",
    "Pair",
    "check_image_name",
    "descriptors_at",
    "matches_dtype",
    "names_to_pair",
    "names_to_pair_old",
    "pair_name_in",
    "parse_keypoints_spec",
    "parse_pairs",
]


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's group name for a pair: ``/`` inside each name becomes ``-``, the two are joined by ``separator``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """The pair name of hloc's older files (joined by ``_``); hloc's readers still look for it."""
    return names_to_pair(name0, name1, separator="_")


def matches_dtype(num_keypoints1: int) -> np.dtype:
    """hloc writes ``matches0`` as int16; int32 when image 1 has more keypoints than int16 can index."""
    return np.dtype(np.int16) if num_keypoints1 <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


@dataclass(frozen=True)
class Pair:
    name0: str
    name1: str
    line: int  # 1-based line in the pairs file


def check_image_name(name: str) -> str | None:
    """Why ``name`` cannot be an image name relative to the image folder, or None when it can."""
    if "\\" in name:
        return "use '/' between folders"
    if name.startswith("/") or (len(name) > 2 and name[0].isalpha() and name[1:3] == ":/"):
        return "is an absolute path; names are relative to --images"
    parts = name.split("/")
    if ".." in parts:
        return "leaves the --images folder ('..')"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' path component; write it as a plain relative path (a/b.jpg)"
    return None


def parse_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read a pairs file: one ``name0 name1`` per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and line, for a line without exactly two names, a name that is absolute or
            leaves the image folder, a pair of an image with itself, or two names hloc would store under the
            same group (``a/b.jpg`` and ``a-b.jpg`` both become ``a-b.jpg`` in pair names).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"pairs file {path} is not UTF-8 text ({err})") from None
    pairs, flat_names = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        names = line.split()
        if len(names) != 2:
            raise ValueError(
                f"{path}:{number}: expected two image names 'name0 name1', got {len(names)}: {line[:200]!r}"
            )
        for name in names:
            why = check_image_name(name)
            if why:
                raise ValueError(f"{path}:{number}: image name {name!r} {why}")
            flat = name.replace("/", "-")
            if flat_names.setdefault(flat, (name, number))[0] != name:
                other, other_line = flat_names[flat]
                raise ValueError(
                    f"{path}:{number}: {name!r} and {other!r} (line {other_line}) would share the pair name "
                    f"{flat!r} in matches.h5 (hloc replaces '/' by '-'); rename one of them"
                )
        if names[0] == names[1]:
            raise ValueError(f"{path}:{number}: pairs an image with itself ({names[0]!r})")
        pairs.append(Pair(names[0], names[1], number))
    return pairs


class KeypointError(ValueError):
    """Keypoints for one image that cannot be used."""


@dataclass(frozen=True)
class GridKeypoints:
    """A regular grid: the centre of every feature cell (``stride=None``) or of every ``stride``-pixel block."""

    stride: int | None = None

    @property
    def spec(self) -> str:
        return f"grid:{self.stride or 'cell'}"

    def __call__(self, name: str, original_size: tuple[int, int], feature_shape: tuple[int, ...]):
        """``(keypoints [N, 2] float32, scores [N] float32)`` in the original image's pixels."""
        from ..matching.cells import cell_centers

        if self.stride is None:
            kps = cell_centers(*feature_shape[-2:], original_size).numpy()
        else:
            w, h = original_size
            nx, ny = w // self.stride, h // self.stride
            if nx == 0 or ny == 0:
                raise KeypointError(f"image {name} ({w}x{h}) is smaller than the grid stride {self.stride}")
            xs = (np.arange(nx, dtype=np.float32) + 0.5) * self.stride - 0.5
            ys = (np.arange(ny, dtype=np.float32) + 0.5) * self.stride - 0.5
            gx, gy = np.meshgrid(xs, ys)
            kps = np.stack([gx.ravel(), gy.ravel()], axis=1)
        return kps.astype(np.float32), np.ones(len(kps), dtype=np.float32)


class H5Keypoints:
    """Keypoints read from another hloc ``features.h5`` (e.g. SuperPoint's), checked before use."""

    def __init__(self, path: str | os.PathLike) -> None:
        h5py = import_h5py()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--keypoints h5:{self.path}: no such file")
        try:
            self._fd = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"--keypoints h5:{self.path} is not a readable HDF5 file ({err})") from None

    @property
    def spec(self) -> str:
        return f"h5:{self.path.resolve()}"

    def close(self) -> None:
        self._fd.close()

    def __call__(self, name: str, original_size: tuple[int, int], feature_shape: tuple[int, ...]):
        """``(keypoints [N, 2] float32, scores [N] float32)`` of image ``name``; raises :class:`KeypointError`."""
        where = f"keypoints file {self.path}, image {name}"
        h5py = import_h5py()
        grp = self._fd.get(name)
        if not isinstance(grp, h5py.Group) or not isinstance(grp.get("keypoints"), h5py.Dataset):
            raise KeypointError(f"{where}: no dataset '{name}/keypoints' in the file")
        kps = np.asarray(grp["keypoints"])
        if kps.ndim != 2 or kps.shape[1] != 2 or not np.issubdtype(kps.dtype, np.number):
            raise KeypointError(
                f"{where}: keypoints must be a numeric [N, 2] (x, y) array, got {kps.dtype} {list(kps.shape)}"
            )
        kps = kps.astype(np.float32)
        if not np.isfinite(kps).all():
            raise KeypointError(f"{where}: keypoints contain NaN or Inf")
        w, h = original_size
        if "image_size" in grp:
            size = np.asarray(grp["image_size"]).ravel()
            if size.shape != (2,) or tuple(int(v) for v in size) != (w, h):
                raise KeypointError(
                    f"{where}: the file's image_size {size.tolist()} is not the image's size "
                    f"[{w}, {h}]; the keypoints were detected on another image"
                )
        outside = (kps[:, 0] < -0.5) | (kps[:, 0] > w - 0.5) | (kps[:, 1] < -0.5) | (kps[:, 1] > h - 0.5)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise KeypointError(
                f"{where}: keypoint {i} = ({kps[i, 0]:.1f}, {kps[i, 1]:.1f}) is outside the {w}x{h} "
                "image (hloc's convention: 0-based pixel centres in the original image)"
            )
        scores = np.ones(len(kps), dtype=np.float32)
        if "scores" in grp:
            s = np.asarray(grp["scores"])
            if s.shape != (len(kps),):
                raise KeypointError(f"{where}: scores must be [N] = [{len(kps)}], got {list(s.shape)}")
            scores = s.astype(np.float32)
        return kps, scores


def parse_keypoints_spec(spec: str) -> Any:
    """``grid`` / ``grid:cell`` (one keypoint per feature cell), ``grid:STRIDE`` (pixels) or ``h5:PATH``."""
    kind, _, arg = spec.partition(":")
    if kind == "grid":
        if arg in ("", "cell"):
            return GridKeypoints()
        try:
            stride = int(arg)
        except ValueError:
            stride = 0
        if stride < 1:
            raise ValueError(f"--keypoints {spec}: STRIDE must be a positive number of pixels, e.g. grid:8")
        return GridKeypoints(stride)
    if kind == "h5" and arg:
        return H5Keypoints(arg)
    raise ValueError(f"--keypoints {spec!r}: expected grid, grid:cell, grid:STRIDE (pixels) or h5:PATH")


def descriptors_at(
    features: torch.Tensor,  # [C, h, w]
    keypoints: np.ndarray,  # [N, 2] float32, original-image pixels
    original_size: tuple[int, int],
    convention: str,
) -> np.ndarray:  # [C, N] float32, L2-normalised
    """The feature map sampled bilinearly at the keypoints, L2-normalised, in hloc's ``[D, N]`` layout."""
    from ..matching import sample_descriptors

    if len(keypoints) == 0:
        return np.zeros((features.shape[0], 0), dtype=np.float32)
    desc = sample_descriptors(features.float(), torch.from_numpy(keypoints), original_size, convention=convention)
    return torch.nn.functional.normalize(desc, dim=1).T.contiguous().cpu().numpy()


def pair_name_in(names: set[str], name0: str, name1: str) -> bool:
    """Whether a pair is already in a matches file, under any of the names hloc's ``find_pair`` tries."""
    return any(
        n in names
        for n in (
            names_to_pair(name0, name1),
            names_to_pair(name1, name0),
            names_to_pair_old(name0, name1),
            names_to_pair_old(name1, name0),
        )
    )
