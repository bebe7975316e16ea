"""What an export is keyed by: the weights' hash, the tool versions, and the export cache folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dift_fast.cache import cache_root

from .manifest import FORMAT, FORMAT_VERSION, stable_hash

__all__ = ["default_cache_dir", "export_key", "tool_versions", "weights_hash"]


def weights_hash(*modules: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the modules' parameters and buffers."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    import diffusers
    import onnx

    import dift_fast

    return {"torch": torch.__version__, "onnx": onnx.__version__, "diffusers": diffusers.__version__,
            "dift_fast": dift_fast.__version__}


def export_key(spec: dict[str, Any]) -> str:
    """Hash of everything the exported graphs depend on (``spec`` plus format and tool versions)."""
    return stable_hash({"format": FORMAT, "format_version": FORMAT_VERSION, "tools": tool_versions(), **spec})


def default_cache_dir() -> Path:
    """Where exports go when no folder is given: ``cache_root()/onnx`` (one sub-folder per export key)."""
    return cache_root() / "onnx"
