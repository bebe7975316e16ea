"""``dift-fast sweep``: the (t, block) grid search, offline on synthetic-homography with tiny random models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dift_fast.cli import main
from dift_fast.eval.sweep import SweepResult, to_markdown
from dift_fast.extractor import DiftExtractor

SYNTH = ["synthetic-homography", "--limit", "2", "--ensemble-size", "1", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture
def grid_calls(monkeypatch):
    """Every extract_grid_prepared call's cells (the extraction passes a sweep makes)."""
    calls: list[list[tuple[int, int]]] = []
    original = DiftExtractor.extract_grid_prepared

    def recording(self, prepared, *args, cells=None, **kwargs):
        calls.append(sorted(cells))
        return original(self, prepared, *args, cells=cells, **kwargs)

    monkeypatch.setattr(DiftExtractor, "extract_grid_prepared", recording)
    return calls


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_sweep_equals_eval_per_cell_and_resumes_a_grown_grid(tiny_model_dir, tmp_path, capsys, grid_calls):
    out = tmp_path / "sweep"
    model = ["--model", str(tiny_model_dir), "--image-size", "64x48"]
    assert main(["sweep", *SYNTH, *model, "--timesteps", "0,261", "--blocks", "0,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scored 4 of 4 cells" in printed and "grid PCK@0.10 over (t, block)" in printed
    # one pass per image for all four cells: every extraction asked for the whole grid
    assert grid_calls and all(cells == [(0, 0), (0, 1), (261, 0), (261, 1)] for cells in grid_calls)
    rows = read_csv(out / "sweep.csv")
    assert [(int(r["t"]), int(r["block"])) for r in rows] == [(0, 0), (0, 1), (261, 0), (261, 1)]
    # each cell scores what `dift-fast eval` scores with that t and block (its own extractor and cache)
    for r in rows:
        t, k = r["t"], r["block"]
        cell_out = tmp_path / f"eval-{t}-{k}"
        assert main(["eval", *SYNTH, *model, "--t", t, "--block", k, "--out", str(cell_out)]) == 0
        measured = json.loads((cell_out / "synthetic-homography.json").read_text())["metrics"]
        for name, value in measured.items():
            assert r[name] == ("" if value is None else f"{value:.4f}"), (t, k, name)
    # the best cell is the highest score, marked in the CSV, bold in the markdown, boxed in the PNG
    best = max(rows, key=lambda r: float(r["grid PCK@0.10"]))
    assert [r["best"] for r in rows].count("1") == 1 and best["best"] == "1"
    assert f"Best: **t={best['t']}, block {best['block']}**" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # grow the grid: only the new t is extracted and scored
    grid_calls.clear()
    assert main(["sweep", *SYNTH, *model, "--timesteps", "0,261,500", "--blocks", "0,1", "--out", str(out)]) == 0
    assert "scored 2 of 6 cells" in capsys.readouterr().out
    assert grid_calls and all(cells == [(500, 0), (500, 1)] for cells in grid_calls)
    assert len(read_csv(out / "sweep.csv")) == 6
    # other benchmark options are another sweep: every cell is scored again (features stay cached)
    grid_calls.clear()
    assert (
        main(
            [
                "sweep",
                *SYNTH,
                *model,
                "--timesteps",
                "0,261",
                "--blocks",
                "0",
                "--seed-pairs",
                "3",
                "--limit",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "scored 2 of 2 cells" in capsys.readouterr().out


def test_sweep_on_every_backbone_validates_blocks(tiny_model_dir, tmp_path, capsys):
    runs = {
        "adm": ["--model", "tiny-random-adm", "--image-size", "64x64", "--blocks", "2,4"],
        "cleandift": ["--model", "tiny-random", "--preset", "cleandift", "--image-size", "64x48", "--blocks", "1,3"],
    }
    for backbone, args in runs.items():
        out = tmp_path / backbone
        assert main(["sweep", *SYNTH, *args, "--timesteps", "41,261", "--out", str(out)]) == 0, backbone
        rows = read_csv(out / "sweep.csv")
        assert len(rows) == 4 and all(r["grid PCK@0.10"] for r in rows)
        identities = [json.loads(p.read_text())["identity"] for p in sorted((out / "cells").glob("*.json"))]
        assert {(i["backbone"], i["t"], i["block"]) for i in identities} == {
            (backbone, t, k) for t in (41, 261) for k in (int(b) for b in args[-1].split(","))
        }
    capsys.readouterr()
    assert (
        main(
            [
                "sweep",
                *SYNTH,
                "--model",
                "tiny-random-adm",
                "--image-size",
                "64x64",
                "--timesteps",
                "41",
                "--blocks",
                "4,18",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "--blocks [18] are not feature blocks of backbone 'adm': allowed are 0..17" in capsys.readouterr().err
    assert (
        main(
            ["sweep", *SYNTH, "--model", str(tiny_model_dir), "--image-size", "64x48", "--out", str(tmp_path / "none")]
        )
        == 2
    )
    assert "sweep needs --timesteps and/or --blocks" in capsys.readouterr().err
    assert (
        main(
            [
                "sweep",
                *SYNTH,
                "--model",
                str(tiny_model_dir),
                "--image-size",
                "64x48",
                "--timesteps",
                "0",
                "--blocks",
                "1",
                "--metric",
                "nonsense",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "metric 'nonsense' is not one synthetic-homography measures; choose one of" in capsys.readouterr().err


def test_a_bad_metric_fails_after_the_first_cell(tiny_model_dir, tmp_path, capsys):
    argv = ["sweep", *SYNTH, "--model", str(tiny_model_dir), "--image-size", "64x48", "--timesteps", "0,100,200",
            "--blocks", "1", "--metric", "nonsense", "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "metric 'nonsense' is not one" in capsys.readouterr().err
    assert len(list((tmp_path / "m" / "cells").glob("*.json"))) == 1  # one cell scored, not the whole grid


def test_best_cell_and_table_with_missing_values():
    def record(value):
        return {"metrics": {"m": value}}

    scores = {(0, 0): record(10.0), (0, 1): record(None), (50, 0): record(30.0), (50, 1): record(30.0)}
    result = SweepResult("spair", "m", [0, 50], [0, 1], scores)
    assert result.best == (50, 0)  # ties go to the first cell in t-major order
    text = to_markdown(result)
    assert "| 0 | 10.00 | **30.00** |" in text and "| 1 | - | 30.00 |" in text
    assert SweepResult("spair", "m", [0], [0], {(0, 0): record(None)}).best is None
