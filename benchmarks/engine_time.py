"""The engine's time per image from a ``dift-fast bench --out`` JSON (no torch import: the GPU check's summary
uses it too, and must work whatever else failed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def engine_ms_from_json(path: Path, batch: int) -> tuple[float | None, str]:
    """The engine's p50 time per image at ``batch`` from a ``dift-fast bench --out`` JSON: (ms or None, note).

    Looks at every record (any nested dict) with a batch size equal to ``batch`` and a per-image time (a number in
    ms, or a dict with a p50), skipping reference-style/baseline records; takes the fastest, which makes the
    share of noise + reduction the largest, i.e. the conservative figure.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"cannot read {path}: {err}"
    found: list[tuple[float, str]] = []

    def per_image_ms(rec: dict[str, Any]) -> float | None:
        for key, value in rec.items():
            if "per_image" not in key or "flop" in key:
                continue
            scale = 1e3 if key.endswith("_s") or key.endswith("seconds") else 1.0
            if isinstance(value, dict):
                value = next((value[k] for k in ("p50_ms", "p50", "median_ms", "median") if k in value), None)
                scale = 1e3 if key.endswith("_s") else 1.0
            if isinstance(value, (int, float)) and value > 0:
                return float(value) * scale
        return None

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            size = next((node[k] for k in ("batch_size", "batch") if isinstance(node.get(k), int)), None)
            label = " ".join(str(node.get(k, "")) for k in ("name", "path", "side", "backend", "kind", "mode"))
            if size == batch and not re.search(r"baseline|reference", label, re.I):
                ms = per_image_ms(node)
                if ms is not None:
                    found.append((ms, f"{where} ({label.strip() or 'engine'})"))
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(data, path.name)
    if not found:
        return None, f"no engine record with batch size {batch} and a per-image time in {path}"
    ms, where = min(found)
    return ms, f"fastest of {len(found)} engine record(s) at batch {batch}: {where}"
