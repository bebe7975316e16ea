"""A benchmark's result: printed as a table and written as JSON and markdown, reported beside measured."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..backbones.catalog import protocol_preset
from ..config import PRESETS, DiftConfig
from .reported import REPORTED, REPORTED_SOURCE

__all__ = ["Report", "format_table", "protocol_differences", "to_markdown", "write_report"]

RANDOM_WEIGHTS_NOTE = "the model has random weights (tiny-random or a test model): these numbers mean nothing"


@dataclass
class Report:
    benchmark: str
    metrics: dict[str, float | None]  # headline numbers in percent, by name
    details: dict[str, Any] = field(default_factory=dict)  # per category / per video / per group
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def reported(self) -> dict[str, float]:
        """The paper's numbers for this benchmark: DIFT_sd's, so none beside another backbone's measurement."""
        if self.config.get("backbone", "sd") != "sd":
            return {}
        return REPORTED.get(self.benchmark, {})

    def rows(self) -> list[tuple[str, float | None, float | None]]:
        """(metric, reported, measured) for every metric measured or reported."""
        names = list(self.metrics) + [n for n in self.reported if n not in self.metrics]
        return [(n, self.reported.get(n), self.metrics.get(n)) for n in names]

    @property
    def reported_source(self) -> str:
        backbone = self.config.get("backbone", "sd")
        if backbone != "sd":
            return f"the listed paper numbers are DIFT_sd's; none are shown beside backbone {backbone!r}"
        return REPORTED_SOURCE.get(self.benchmark, "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reported"] = self.reported
        data["reported_source"] = self.reported_source
        return data


def protocol_differences(benchmark: str, config: DiftConfig) -> list[str]:
    """Settings of ``config`` that differ from the benchmark's protocol preset for its backbone (spec §5, §6)."""
    preset = PRESETS[protocol_preset(benchmark, config.backbone)]
    out = []
    for key, want in preset.items():
        if key == "image_size" and benchmark in ("davis", "jhmdb"):
            continue  # the video benchmarks size each video by the short-side rule instead
        have = getattr(config, key)
        if (tuple(have) if isinstance(have, (list, tuple)) else have) != want:
            out.append(f"{key}={have!r} (protocol: {want!r})")
    return out


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}"


def format_table(report: Report) -> str:
    """Plain-text table: metric | reported | measured, then the notes."""
    rows = [("metric", "reported", "measured")] + [(n, _fmt(r), _fmt(m)) for n, r, m in report.rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{report.benchmark}: {', '.join(f'{k} {v}' for k, v in report.counts.items())}"]
    for i, row in enumerate(rows):
        lines.append(f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}")
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    lines.append(f"  reported: {report.reported_source}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


def _detail_tables(details: dict[str, Any]) -> list[str]:
    """Markdown tables for the details that are {row: {column: value}} mappings."""
    out = []
    for title, table in details.items():
        if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
            continue
        cols = list(next(iter(table.values())))
        out += ["", f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, row in table.items():
            cells = [_fmt(row.get(c)) if isinstance(row.get(c), float) or row.get(c) is None else str(row.get(c))
                     for c in cols]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def to_markdown(report: Report) -> str:
    lines = [f"# dift-fast eval {report.benchmark}", ""]
    lines += [f"- {k}: {v}" for k, v in report.counts.items()]
    lines += [f"- time: {report.seconds:.1f} s", f"- model: {report.config.get('model')}", ""]
    lines += ["| metric | reported | measured |", "|---|---|---|"]
    lines += [f"| {n} | {_fmt(r)} | {_fmt(m)} |" for n, r, m in report.rows()]
    lines += ["", f"Reported: {report.reported_source}."]
    if report.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in report.notes]
    lines += _detail_tables(report.details)
    return "\n".join(lines) + "\n"


def _finite(obj: Any) -> Any:
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out_dir>/<benchmark>.json`` and ``.md``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{report.benchmark}.json", out / f"{report.benchmark}.md"
    write_atomic(json_path, json.dumps(_finite(report.to_dict()), indent=2, default=str) + "\n")
    write_atomic(md_path, to_markdown(report))
    return json_path, md_path
