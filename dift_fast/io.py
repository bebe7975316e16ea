"""Feature files written by ``dift-fast extract IMAGES --out FILE.safetensors``.

One safetensors file: tensor ``features`` [B, C, h, w] plus JSON metadata (config, image names, original sizes,
noise keys, and the feature identity of :mod:`dift_fast.identity`: what the features are interchangeable with).
Written atomically (:mod:`dift_fast.atomic`), so a crash never leaves a half-written file.
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

__all__ = ["FeatureFile", "load_features", "save_features"]

FORMAT = "dift-fast-features/1"


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
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": FORMAT,
        "names": json.dumps(names),
        "original_sizes": json.dumps([list(s) for s in original_sizes]),
        "config": config.to_json(),
        "image_keys": json.dumps([str(k) for k in image_keys]),
        "extra": json.dumps(extra or {}),
    }
    if identity is not None:
        meta["identity"] = json.dumps(identity, sort_keys=True)
    with atomic_path(path) as tmp:
        try:
            save_file({"features": features.detach().cpu().contiguous()}, str(tmp), metadata=meta)
        except Exception as err:  # safetensors reports I/O failures as its own error type: make them an OSError
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), f"{os.strerror(int(code.group(1)))} while writing {path}") from None
    return path


def load_features(path: str | os.PathLike) -> FeatureFile:
    """Read a feature file written by :func:`save_features`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
    except Exception as err:
        raise ValueError(f"{path} is not a dift-fast feature file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dift-fast feature file (format {meta.get('format')!r}, expected {FORMAT})")
    try:
        out = FeatureFile(
            features=features,
            names=json.loads(meta["names"]),
            original_sizes=[tuple(int(v) for v in s) for s in json.loads(meta["original_sizes"])],
            config=DiftConfig.from_dict(json.loads(meta["config"])),
            image_keys=[int(k) for k in json.loads(meta["image_keys"])],
            extra=json.loads(meta.get("extra", "{}")),
            identity=json.loads(meta["identity"]) if "identity" in meta else None,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: damaged feature file metadata ({type(err).__name__}: {err})") from None
    if features.ndim != 4 or not len(out.names) == len(out.original_sizes) == len(out.image_keys) == len(features):
        raise ValueError(f"{path}: damaged feature file: features {list(features.shape)} for {len(out.names)} names, "
                         f"{len(out.original_sizes)} sizes and {len(out.image_keys)} noise keys")
    return out
