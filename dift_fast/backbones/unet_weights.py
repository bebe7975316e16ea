"""Replacing every weight of an SD UNet from a safetensors state dict (CleanDIFT's file format), local or on the hub.

The file is a plain diffusers ``UNet2DConditionModel`` state dict, as CleanDIFT's ``cleandift_sd21_unet.safetensors``
(hub repository ``CompVis/cleandift``, MIT licence; its README loads it with ``unet.load_state_dict(state_dict,
strict=True)``), usually stored in 16 bits. Also accepted, because they hold the same tensors under a prefix (which
is stripped):

- ``unet.`` + the UNet keys (a pipeline-level state dict);
- ``unet_feature_extractor_cleandift.`` + the UNet keys: the repository's ``cleandift_sd21_full.safetensors``, whose
  other entries (the original SD UNet under ``unet_feature_extractor_base.``, adapters, ...) are ignored.

Only safetensors files are read. Every UNet key must be present exactly once with the UNet's shape; errors name the
offending keys and the file. Tensors are read one at a time and cast into the dtype the caller asks for. The
CleanDIFT backbone that uses it is :mod:`.cleandift`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .catalog import CLEANDIFT_UNET_WEIGHTS
from .hub import resolve_weights_file
from .weights import WeightsError, check_state_dict, read_safetensors_shapes

__all__ = [
    "CLEANDIFT_KEY_PREFIXES",
    "CLEANDIFT_UNET_FILE",
    "load_unet_weights",
    "select_unet_keys",
]

CLEANDIFT_UNET_FILE = CLEANDIFT_UNET_WEIGHTS.rpartition("/")[2]
# Key prefixes a file may put before the diffusers UNet keys, most specific last; "" is the released UNet file.
CLEANDIFT_KEY_PREFIXES = ("", "unet.", "unet_feature_extractor_cleandift.")

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors' dtype names

logger = logging.getLogger(__name__)


def select_unet_keys(
    file_shapes: dict[str, tuple[int, ...]], unet_shapes: dict[str, tuple[int, ...]], source: str | os.PathLike
) -> str:
    """The prefix (one of :data:`CLEANDIFT_KEY_PREFIXES`) under which ``file_shapes`` holds the UNet's keys.

    The prefix whose stripped keys overlap the UNet's keys most wins; under it the keys and shapes must match the
    UNet exactly (with the empty prefix, every key in the file must be a UNet key).

    Raises:
        WeightsError: no prefix holds UNet keys, or the keys/shapes under the chosen one do not match (named).
    """
    best, best_overlap = "", -1
    for prefix in CLEANDIFT_KEY_PREFIXES:
        stripped = {k[len(prefix) :] for k in file_shapes if k.startswith(prefix)}
        overlap = len(stripped & unet_shapes.keys())
        if overlap > best_overlap:
            best, best_overlap = prefix, overlap
    if best_overlap == 0:
        sample = ", ".join(sorted(file_shapes)[:5])
        raise WeightsError(
            f"{source} holds no SD UNet weights (keys like {sample or '(none)'}); expected diffusers "
            f"UNet2DConditionModel keys, optionally under one of the prefixes "
            f"{', '.join(repr(p) for p in CLEANDIFT_KEY_PREFIXES if p)} -- e.g. {CLEANDIFT_UNET_FILE}"
        )
    selected = {k[len(best) :]: s for k, s in file_shapes.items() if k.startswith(best)}
    check_state_dict(
        selected,
        unet_shapes,
        source,
        "the SD 2.1 UNet" + (f" (keys under the prefix {best!r})" if best else ""),
        hint=f"CleanDIFT's UNet file is {CLEANDIFT_UNET_WEIGHTS}",
    )
    if best:
        ignored = len(file_shapes) - len(selected)
        logger.info("%s: using the UNet keys under %r (%d other entries ignored)", source, best, ignored)
    return best


def load_unet_weights(
    unet: nn.Module,
    weights: str | os.PathLike = CLEANDIFT_UNET_WEIGHTS,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> Path:
    """Replace every weight of a full SD ``UNet2DConditionModel`` with those of a safetensors file (in place).

    Apply it to the full UNet before truncating it (the file covers the whole UNet).

    Args:
        unet: the UNet whose weights are replaced (any device; moved to ``dtype`` first when given).
        weights: a local ``.safetensors`` file or ``owner/repo/filename`` on the hub (default: CleanDIFT's).
        dtype: the dtype the UNet ends in; default: the UNet's current dtype. The file's (16-bit) values are cast.
        revision: hub revision for a hub spec.

    Returns:
        The local path of the weights file (for hashing it into the feature identity).

    Raises:
        WeightsError: not a safetensors file, unreadable, or keys/shapes/dtypes that do not fit the UNet.
    """
    from safetensors import safe_open

    path = resolve_weights_file(weights, revision=revision)
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(
            f"UNet weights {path} must be a .safetensors file (other formats can hold code and are not read here)"
        )
    if dtype is not None:
        unet.to(dtype)
    targets = unet.state_dict()
    prefix = select_unet_keys(read_safetensors_shapes(path), {k: tuple(v.shape) for k, v in targets.items()}, path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f, torch.no_grad():
            # Dtypes from the header first, so a bad file is refused before any weight is replaced.
            bad = sorted(prefix + k for k in targets if f.get_slice(prefix + k).get_dtype() not in _FLOAT_DTYPES)
            if bad:
                raise WeightsError(f"{path}: {', '.join(bad[:5])} hold non-floating-point values")
            for key, target in targets.items():
                target.copy_(f.get_tensor(prefix + key))  # casts from the file's dtype into the UNet's
    except WeightsError:
        raise
    except Exception as err:  # truncated data section, I/O error
        raise WeightsError(f"could not read the tensors of {path}: {type(err).__name__}: {err}") from None
    return path
