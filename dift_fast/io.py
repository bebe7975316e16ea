"""Feature files written by ``dift-fast extract IMAGES --out FILE.safetensors``.

One safetensors file: tensor ``features`` [B, C, h, w] plus JSON metadata (config, image names, original sizes,
noise keys, and the feature identity of :mod:`dift_fast.identity`: what the features are interchangeable with).
A grid file (``--timesteps``/``--blocks`` with several cells) holds one tensor per (t, block) cell instead, named
``features/t261-block1`` (:func:`dift_fast.grid.cell_name`), and its metadata lists every cell with its t, block,
tensor name and feature identity. Written atomically (:mod:`dift_fast.atomic`), so a crash never leaves a
half-written file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .config import DiftConfig
from .grid import Cell, cell_label, cell_name

__all__ = ["FeatureFile", "feature_file_cells", "load_feature_grid", "load_features", "save_feature_grid",
           "save_features"]

FORMAT = "dift-fast-features/1"
GRID_FORMAT = "dift-fast-feature-grid/1"  # several (t, block) cells, one tensor each


@dataclass
class FeatureFile:
    features: torch.Tensor  # [B, C, h, w]
    names: list[str]
    original_sizes: list[tuple[int, int]]  # (width, height)
    config: DiftConfig
    image_keys: list[int]
    extra: dict[str, Any]
    identity: dict[str, Any] | None = None  # the feature identity (None in files written before it was recorded)

    def index_of(self, name: str) -> int:
        """Position of the image called ``name`` (exact, or by file name)."""
        for i, n in enumerate(self.names):
            if n == name or Path(n).name == name:
                return i
        raise KeyError(
            f"no image {name!r} in this feature file; it holds {self.names[:5]}{'...' if len(self.names) > 5 else ''}"
        )


def _batch_meta(
    fmt: str,
    names: list[str],
    original_sizes: list[tuple[int, int]],
    config: DiftConfig,
    image_keys: list[int],
    extra: dict[str, Any] | None,
) -> dict[str, str]:
    """The metadata every feature file holds: format, names, original sizes, config, noise keys, extra."""
    return {
        "format": fmt,
        "names": json.dumps(names),
        "original_sizes": json.dumps([list(s) for s in original_sizes]),
        "config": config.to_json(),
        "image_keys": json.dumps([str(k) for k in image_keys]),
        "extra": json.dumps(extra or {}),
    }


def save_features(
    path: str | os.PathLike,
    features: torch.Tensor,
    names: list[str],
    original_sizes: list[tuple[int, int]],
    config: DiftConfig,
    image_keys: list[int],
    extra: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """Write a feature file atomically (mode 0o666 less the umask, like any file the user creates).

    ``identity`` is the features' identity (:func:`dift_fast.identity.extractor_identity`), recorded so that
    whoever reads the file (``dift-fast index``) can tell which features it may be combined with.
    """
    path = Path(path)
    meta = _batch_meta(FORMAT, names, original_sizes, config, image_keys, extra)
    if identity is not None:
        meta["identity"] = json.dumps(identity, sort_keys=True)
    return write_safetensors(path, {"features": features}, meta)


def save_feature_grid(
    path: str | os.PathLike,
    features: dict[Cell, torch.Tensor],
    names: list[str],
    original_sizes: list[tuple[int, int]],
    config: DiftConfig,
    image_keys: list[int],
    identities: dict[Cell, dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the features of several (t, block) cells of the same images into one file, atomically.

    Args:
        features: ``{(t, k): [B, C_k, h_k, w_k]}`` (what ``extractor.extract_grid`` returns).
        config: the grid extractor's config; each cell's config is it with that cell's t and up_ft_index.
        identities: the feature identity of each cell (``extractor_identity(extractor, t=t, block=k)``).
    """
    if set(identities) != set(features):
        raise ValueError(f"identities are given for cells {sorted(identities)}, features for {sorted(features)}")
    cells = [{"t": int(t), "block": int(k), "tensor": f"features/{cell_name(t, k)}", "identity": identities[(t, k)]}
             for t, k in features]
    meta = _batch_meta(GRID_FORMAT, names, original_sizes, config, image_keys, extra)
    meta["cells"] = json.dumps(cells, sort_keys=True)
    return write_safetensors(path, {c["tensor"]: features[(c["t"], c["block"])] for c in cells}, meta)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write ``tensors`` and ``meta`` to a safetensors file atomically; a failed write (disk full) is an OSError."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        except Exception as err:  # safetensors reports I/O failures as its own error type: make them an OSError
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), f"{os.strerror(int(code.group(1)))} while writing {path}") from None
    return path


def load_features(path: str | os.PathLike, cell: Cell | None = None) -> FeatureFile:
    """Read a feature file written by :func:`save_features`, or one cell of a grid file (:func:`save_feature_grid`).

    Args:
        cell: ``(t, block)`` of a grid file; may be left out when the file holds one cell.

    Raises:
        ValueError: not a feature file, damaged metadata, or a grid file with several cells and no ``cell``
            (the message lists them).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") == GRID_FORMAT:
                entry = _grid_entry(path, meta, cell)
                features = f.get_tensor(entry["tensor"])
            elif meta.get("format") == FORMAT:
                if cell is not None and cell != _single_cell(path, meta):
                    raise ValueError(f"{path} holds the features of {cell_label(*_single_cell(path, meta))} only, "
                                     f"not {cell_label(*cell)}")
                entry, features = None, f.get_tensor("features")
            else:
                raise ValueError(f"{path} is not a dift-fast feature file (format {meta.get('format')!r}, expected "
                                 f"{FORMAT} or {GRID_FORMAT})")
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a dift-fast feature file ({err})") from None
    try:
        config = DiftConfig.from_dict(json.loads(meta["config"]))
        if entry is not None:
            config = config.replace(t=int(entry["t"]), up_ft_index=int(entry["block"]))
        out = FeatureFile(
            features=features,
            names=json.loads(meta["names"]),
            original_sizes=[tuple(int(v) for v in s) for s in json.loads(meta["original_sizes"])],
            config=config,
            image_keys=[int(k) for k in json.loads(meta["image_keys"])],
            extra=json.loads(meta.get("extra", "{}")),
            identity=entry["identity"] if entry is not None else
            (json.loads(meta["identity"]) if "identity" in meta else None),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: damaged feature file metadata ({type(err).__name__}: {err})") from None
    if features.ndim != 4 or not len(out.names) == len(out.original_sizes) == len(out.image_keys) == len(features):
        raise ValueError(f"{path}: damaged feature file: features {list(features.shape)} for {len(out.names)} names, "
                         f"{len(out.original_sizes)} sizes and {len(out.image_keys)} noise keys")
    return out


def feature_file_cells(path: str | os.PathLike) -> list[Cell]:
    """The (t, block) cells a feature file holds (one for a plain file), without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path} is not a dift-fast feature file ({err})") from None
    if meta.get("format") == GRID_FORMAT:
        return [(int(c["t"]), int(c["block"])) for c in _grid_cells(path, meta)]
    if meta.get("format") == FORMAT:
        return [_single_cell(path, meta)]
    raise ValueError(f"{path} is not a dift-fast feature file (format {meta.get('format')!r})")


def load_feature_grid(path: str | os.PathLike) -> dict[Cell, FeatureFile]:
    """Every cell of a feature file: ``{(t, block): FeatureFile}`` (one entry for a plain file)."""
    return {cell: load_features(path, cell) for cell in feature_file_cells(path)}


def _single_cell(path: Path, meta: dict[str, str]) -> Cell:
    try:
        config = json.loads(meta["config"])
        return int(config["t"]), int(config["up_ft_index"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: damaged feature file metadata ({type(err).__name__}: {err})") from None


def _grid_cells(path: Path, meta: dict[str, str]) -> list[dict[str, Any]]:
    try:
        cells = json.loads(meta["cells"])
        if not isinstance(cells, list) or not cells or not all(
            isinstance(c, dict) and {"t", "block", "tensor", "identity"} <= set(c) for c in cells
        ):
            raise ValueError("no valid cell list")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: damaged feature grid metadata ({type(err).__name__}: {err})") from None
    return cells


def _grid_entry(path: Path, meta: dict[str, str], cell: Cell | None) -> dict[str, Any]:
    cells = _grid_cells(path, meta)
    listed = ", ".join(f"({c['t']}, {c['block']})" for c in cells)
    if cell is None:
        if len(cells) > 1:
            raise ValueError(f"{path} holds {len(cells)} (t, block) cells ({listed}); choose one: "
                             "load_features(path, cell=(t, block))")
        return cells[0]
    for c in cells:
        if (int(c["t"]), int(c["block"])) == tuple(cell):
            return c
    raise ValueError(f"{path} has no cell {cell_label(*cell)}; it holds ({listed})")
