"""The (t, block) grid search of the paper's §3: one benchmark scored at every cell of a grid (``dift-fast sweep``).

Features for every cell come from one network pass per image and t (:class:`~.features.GridFeatureCache` over
``extract_grid_prepared``); each cell is then scored by the benchmark's own runner, unchanged, which sees a
:class:`CellExtractor` (the grid's extractor as one configured for that cell) and that cell's feature cache.
A cell's score is kept under ``OUT/cells/`` keyed by its feature identity and the benchmark's options, so a rerun
(or a grown grid) scores only the cells it has not scored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_atomic
from ..grid import Cell, cell_label, cell_name, grid_cells
from ..identity import extractor_identity, identity_digest
from .features import FeatureCache, GridFeatureCache
from .report import RANDOM_WEIGHTS_NOTE, Report, _finite

__all__ = ["PRIMARY_METRICS", "CellExtractor", "SweepResult", "run_sweep"]

SWEEP_FORMAT = "dift-fast-sweep-cell/1"
# The metric each benchmark's grid is ranked by (any other measured metric can be chosen instead).
PRIMARY_METRICS = {
    "spair": "PCK@0.1 per image",
    "pf-willow": "PCK@0.10 per image",
    "hpatches": "overall 3px",
    "davis": "J&F-Mean",
    "jhmdb": "PCK@0.1",
    "synthetic-homography": "grid PCK@0.10",
}


class CellExtractor:
    """One (t, block) cell of a grid's extractor, as an extractor configured for that cell.

    ``config`` is the grid extractor's with the cell's t and ``up_ft_index``; everything else (backend, device,
    model identity, prompts) is the grid extractor's, so :func:`~dift_fast.identity.extractor_identity` of it is the
    cell's identity. :meth:`extract_prepared` computes the cell alone (the runners normally find it cached).
    """

    def __init__(self, grid_extractor: Any, t: int, block: int) -> None:
        grid_extractor.grid_plan(cells=[(t, block)])  # a cell this extractor can compute (else ValueError)
        self._grid = grid_extractor
        self.cell = (t, block)
        self.config = grid_extractor.config.replace(t=t, up_ft_index=block)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def extract_prepared(self, prepared: Sequence[Any], prompt: Any = None, **kwargs: Any) -> Any:
        """The cell's :class:`~dift_fast.extractor.FeatureBatch` (as ``DiftExtractor.extract_prepared``)."""
        return self._grid.extract_grid_prepared(prepared, prompt=prompt, cells=[self.cell], **kwargs).cell(*self.cell)

    def extract(self, images: Any, prompt: Any = None, **kwargs: Any) -> Any:
        return self.extract_prepared(self._grid.prepare(images), prompt, **kwargs).features


@dataclass
class SweepResult:
    """Every cell's score, and where the table and the heat map were written."""

    benchmark: str
    metric: str
    timesteps: list[int]
    blocks: list[int]
    scores: dict[Cell, dict[str, Any]]  # (t, k) -> the cell's record: metrics, counts, notes, identity
    scored: list[Cell] = field(default_factory=list)  # cells scored by this run (the others came from OUT/cells)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def value(self, t: int, block: int) -> float | None:
        v = self.scores[(t, block)]["metrics"].get(self.metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    @property
    def best(self) -> Cell | None:
        """The cell with the highest score (the first in t-major order on ties); None when no cell has one."""
        valued = [
            (self.value(t, k), -i, (t, k))
            for i, (t, k) in enumerate(grid_cells(self.timesteps, self.blocks))
            if self.value(t, k) is not None
        ]
        return max(valued)[2] if valued else None


def run_sweep(
    benchmark: str,
    extractor: Any,
    timesteps: Sequence[int],
    blocks: Sequence[int],
    run_cell: Callable[[CellExtractor, FeatureCache], Report],
    *,
    out: str | os.PathLike,
    cache_root: str | os.PathLike,
    options: dict[str, Any],
    metric: str | None = None,
    progress: bool = True,
) -> SweepResult:
    """Score ``benchmark`` at every (t, block) of ``timesteps`` x ``blocks``; write the table and the heat map.

    Args:
        extractor: the grid's extractor (:func:`dift_fast.grid.grid_config`: loaded for the deepest block).
        run_cell: the benchmark's runner for one cell: ``(cell extractor, cell feature cache) -> Report``.
        out: where ``sweep.csv``, ``sweep.md``, ``sweep.png`` and ``cells/`` (one JSON per scored cell) go.
        cache_root: the feature cache folder (shared with ``dift-fast eval``: one sub-folder per identity).
        options: the benchmark's options (dataset folder, limit, ...); a cell's score is reused only when they and
            the cell's feature identity are unchanged.
        metric: the metric cells are ranked by (default :data:`PRIMARY_METRICS`).
    """
    from tqdm.auto import tqdm

    metric = metric or PRIMARY_METRICS[benchmark]
    out = Path(out)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    timesteps, blocks = list(timesteps), list(blocks)
    scores: dict[Cell, dict[str, Any]] = {}
    todo: list[tuple[Cell, Path, dict[str, Any]]] = []
    for t, k in grid_cells(timesteps, blocks):
        key = {
            "format": SWEEP_FORMAT,
            "benchmark": benchmark,
            "options": _jsonable(options),
            "identity": extractor_identity(extractor, t=t, block=k),
        }
        path = cells_dir / f"{cell_name(t, k)}-{_digest(key)[:16]}.json"
        record = _read_record(path, key)
        if record is not None:
            scores[(t, k)] = record
        else:
            todo.append(((t, k), path, key))
    scored = []
    if scores:  # a typo in --metric fails now, not after every cell has been scored
        _check_metric(metric, benchmark, scores)
    if todo:
        grid = GridFeatureCache(cache_root, extractor, [cell for cell, _, _ in todo])
        for (t, k), path, key in tqdm(todo, desc=f"sweep {benchmark}", unit="cell", disable=not progress):
            cache = grid.cell(t, k)
            report = run_cell(CellExtractor(extractor, t, k), cache)
            cache.clear_memory()  # one cell's maps in memory at a time
            record = {
                **key,
                "cell": [t, k],
                "metrics": report.metrics,
                "counts": report.counts,
                "notes": report.notes,
                "seconds": report.seconds,
            }
            write_atomic(path, json.dumps(_finite(record), indent=1, sort_keys=True) + "\n")
            scores[(t, k)] = record
            scored.append((t, k))
            if len(scores) == 1:  # the first cell's record shows what the benchmark measures
                _check_metric(metric, benchmark, scores)
    _check_metric(metric, benchmark, scores)
    notes = [RANDOM_WEIGHTS_NOTE] if extractor.is_tiny else []
    result = SweepResult(benchmark, metric, timesteps, blocks, scores, scored, notes)
    result.files = write_sweep(result, out)
    return result


def _check_metric(metric: str, benchmark: str, scores: dict[Cell, dict[str, Any]]) -> None:
    measured = {m for r in scores.values() for m in r["metrics"]}
    if metric not in measured:
        raise ValueError(f"metric {metric!r} is not one {benchmark} measures; choose one of {sorted(measured)}")


# -- output ---------------------------------------------------------------------------------------------------


def write_sweep(result: SweepResult, out: Path) -> dict[str, Path]:
    """``sweep.csv`` (one row per cell, every metric), ``sweep.md`` (the score over t x block, best in bold) and
    ``sweep.png`` (the heat map; left out, with a note, when matplotlib is missing)."""
    files = {"csv": out / "sweep.csv", "markdown": out / "sweep.md"}
    write_atomic(files["csv"], to_csv(result))
    write_atomic(files["markdown"], to_markdown(result))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        result.notes.append("no heat map: it needs matplotlib (pip install 'dift-fast[viz]')")
        return files
    files["heatmap"] = out / "sweep.png"
    plot_heatmap(result, files["heatmap"])
    return files


def to_csv(result: SweepResult) -> str:
    metrics = sorted({m for r in result.scores.values() for m in r["metrics"]})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["t", "block", "best", *metrics])
    best = result.best
    for t, k in grid_cells(result.timesteps, result.blocks):
        row = result.scores[(t, k)]["metrics"]
        writer.writerow([t, k, int((t, k) == best), *("" if row.get(m) is None else f"{row[m]:.4f}" for m in metrics)])
    return buf.getvalue()


def to_markdown(result: SweepResult) -> str:
    best = result.best
    lines = [f"# dift-fast sweep {result.benchmark}: {result.metric} over (t, block)", ""]
    if best is not None:
        lines.append(f"Best: **{cell_label(*best)}**, {result.metric} = {result.value(*best):.2f}.")
    else:
        lines.append(f"No cell has a value for {result.metric}.")
    lines += [
        "",
        "| block \\ t | " + " | ".join(str(t) for t in result.timesteps) + " |",
        "|---" * (len(result.timesteps) + 1) + "|",
    ]
    for k in result.blocks:
        cells = []
        for t in result.timesteps:
            v = result.value(t, k)
            text = "-" if v is None else f"{v:.2f}"
            cells.append(f"**{text}**" if (t, k) == best else text)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if result.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def plot_heatmap(result: SweepResult, path: Path) -> None:
    """The score over (t, block) as a heat map: t across, blocks down, every value written, the best cell boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ts, ks = result.timesteps, result.blocks
    values = np.array([[np.nan if result.value(t, k) is None else result.value(t, k) for t in ts] for k in ks])
    width = min(max(4.5, 0.75 * len(ts) + 2.5), 24)
    height = min(max(3.0, 0.55 * len(ks) + 1.8), 14)
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=result.metric)
    ax.set_xticks(range(len(ts)), [str(t) for t in ts])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("timestep t")
    ax.set_ylabel("block")
    finite = values[np.isfinite(values)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    if len(ts) * len(ks) <= 400:  # values written in each cell while they stay readable
        for i in range(len(ks)):
            for j in range(len(ts)):
                v = values[i, j]
                text = "-" if np.isnan(v) else f"{v:.1f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if not np.isnan(v) and v > mid else "white",
                )
    best = result.best
    title = f"{result.benchmark}: {result.metric}"
    if best is not None:
        j, i = ts.index(best[0]), ks.index(best[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        title += f"\nbest {cell_label(*best)}: {result.value(*best):.2f} (red box)"
    if result.notes and result.notes[0] == RANDOM_WEIGHTS_NOTE:
        title += "\nrandom weights: these numbers mean nothing"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# -- the per-cell records ------------------------------------------------------------------------------------------


def _read_record(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A cell's stored record when it is there, whole, and made with ``key``; None to score the cell again."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # damaged (the write is atomic, so only by something else): scored again, then replaced
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        return None
    if any(record.get(name) != _jsonable(value) for name, value in key.items()):
        return None
    return record


def _digest(key: dict[str, Any]) -> str:
    return identity_digest(_jsonable(key))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))
