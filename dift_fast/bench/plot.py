"""``--plot``: images/s and p50 latency per call against batch size, one line per backend/precision."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PLOTTABLE_SCHEMAS", "plot_reports"]

# Report schemas a plot can be drawn from: the fields it reads (records' kind, status, backend, dtype, compile,
# batch_size, stable, images_per_s, call_s) are the same in both.
PLOTTABLE_SCHEMAS = ("dift-fast-bench/1", "dift-fast-bench/2")


def _series(reports: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Engine records grouped by line label (backend, dtype, compile), sorted by batch size."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        for r in report["records"]:
            if r["kind"] != "engine" or r["status"] != "ok":
                continue
            label = f"{r['backend']} {r['dtype']}" + (" compiled" if r["compile"] else "")
            lines.setdefault(label, []).append(r)
    return {
        label + ("" if all(r["stable"] for r in rs) else " (noisy)"): sorted(rs, key=lambda r: r["batch_size"])
        for label, rs in lines.items()
    }


def plot_reports(reports: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write a PNG of one or more reports to ``path``: throughput (left) and latency (right) vs batch size.

    The reference style (when measured) is a dashed horizontal line. The title names the device and model.
    """
    from ..extras import require_extra

    require_extra("viz", "bench --plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..viz import _save

    if not reports:
        raise ValueError("no reports to plot")
    series = _series(reports)
    if not series:
        raise ValueError("nothing to plot: no engine configuration was measured")
    first = reports[0]
    m, cfg = first["machine"], first["config"]
    device = (
        m["gpu"]
        if first["device"].startswith("cuda")
        else f"CPU: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} thread(s)"
    )
    w, h = cfg["image_size"]
    fig = Figure(figsize=(11, 4.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_tp, ax_lat = fig.subplots(1, 2)
    batches = sorted({r["batch_size"] for rs in series.values() for r in rs})
    for label, rs in series.items():
        x = [r["batch_size"] for r in rs]
        ax_tp.plot(x, [r["images_per_s"] for r in rs], marker="o", linewidth=2, label=label)
        ax_lat.plot(x, [r["call_s"]["p50"] * 1e3 for r in rs], marker="o", linewidth=2, label=label)
    baselines = [r for rep in reports for r in rep["records"] if r["kind"] == "baseline" and r["status"] == "ok"]
    if baselines:
        ref = baselines[0]
        ax_tp.axhline(ref["images_per_s"], color="0.3", linestyle="--", linewidth=1.5, label="reference style (fp32)")
        ax_lat.axhline(
            ref["call_s"]["p50"] * 1e3, color="0.3", linestyle="--", linewidth=1.5, label="reference style, 1 image"
        )
    for ax, ylabel in (
        (ax_tp, "images / s (higher is better)"),
        (ax_lat, "p50 latency per call, ms (lower is better)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size (images per call)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"dift-fast bench: {first['model']}, {w}x{h}, E={cfg['ensemble_size']}, block {cfg['up_ft_index']}\n"
        f"{device}; torch {m['torch']}; {first['created']}",
        fontsize=10,
    )
    return _save(fig, path)
