"""Reading weight files without running code in them, and checking a state dict against a model's keys and shapes.

``torch.save`` files are read only with ``torch.load(..., weights_only=True)`` (torch's restricted unpickler: plain
tensors and containers, never arbitrary objects or calls); ``.safetensors`` files hold no code at all.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .base import ModelLoadError

__all__ = [
    "WeightsError",
    "check_state_dict",
    "read_safetensors_shapes",
    "read_state_dict",
]

_LIST_AT_MOST = 8  # keys named per category in an error message


class WeightsError(ModelLoadError):
    """A weight file is unreadable, unsafe, or does not fit the model; the message names the file and the fix."""


def _name_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LIST_AT_MOST])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _LIST_AT_MOST else shown


def _unpickler_reason(err: Exception) -> str:
    """The informative line of torch's weights-only refusal (which global it blocked), not its boilerplate."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "?")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a ``.safetensors`` file or a ``torch.save`` file, on the CPU.

    Raises:
        WeightsError: the file is missing, corrupt, holds pickled code or objects other than tensors (refused, never
            run), or is not a flat mapping of names to tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for bad headers / truncation
            raise WeightsError(f"{path} is not a readable safetensors file: {type(err).__name__}: {err}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise WeightsError(
                f"refusing to load {path}: it is a pickle that holds code or objects other than tensors, which "
                f"dift-fast never unpickles (torch.load(weights_only=True) said: {_unpickler_reason(err)}). "
                "Use the original checkpoint from its publisher, or convert a trusted copy to .safetensors."
            ) from None
        except Exception as err:  # truncated zip, not a torch file at all, ...
            raise WeightsError(
                f"could not read {path} as a torch.save checkpoint: {type(err).__name__}: {err}"
            ) from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors)")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{path} is not a flat state dict: entries {_name_keys(map(str, bad))} are not name -> tensor "
            "(a nested checkpoint, e.g. one with optimizer state, is not supported)"
        )
    return dict(state)


def read_safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a ``.safetensors`` file, read from its header only (no tensor data).

    Raises:
        WeightsError: the file is missing or not a readable safetensors file.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:
        raise WeightsError(f"{path} is not a readable safetensors file: {type(err).__name__}: {err}") from None


def check_state_dict(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    source: str | os.PathLike,
    what: str = "the model",
    hint: str = "",
) -> None:
    """Raise unless ``found`` has exactly the keys of ``expected`` with the same shapes.

    Args:
        found: ``{key: shape}`` read from the weights.
        expected: ``{key: shape}`` the model needs.
        source: the weights file, named in the error.
        what: the model, named in the error.
        hint: appended to the error (how to fix it).

    Raises:
        WeightsError: naming the missing, unexpected and mis-shaped keys (a few of each and their counts).
    """
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    misshaped = sorted(
        f"{k} {tuple(found[k])} (needs {tuple(expected[k])})"
        for k in found.keys() & expected.keys()
        if tuple(found[k]) != tuple(expected[k])
    )
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_name_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_name_keys(unexpected)}")
    if misshaped:
        parts.append(f"wrong shapes: {_name_keys(misshaped)}")
    raise WeightsError(f"{source} does not fit {what}: " + "; ".join(parts) + (f". {hint}" if hint else ""))
