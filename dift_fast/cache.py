"""Where dift-fast keeps what it builds or converts once (tiny model, ONNX exports, converted weights, hashes)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$DIFT_FAST_CACHE``, else ``~/.cache/dift-fast`` (not created here)."""
    return Path(os.environ.get("DIFT_FAST_CACHE") or Path.home() / ".cache" / "dift-fast")
