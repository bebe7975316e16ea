"""scripts/gpu_check.sh (the one command for a GPU machine) and what it reads, checked without a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def engine_time():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import engine_time
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return engine_time


def test_script_parses_and_prints_usage():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=60)
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for step in ("env", "wheels", "preflight", "build", "pytest", "extractor", "kernels", "engine", "compile"):
        assert step in out
    assert "--prepare" in out and "gpu-results/" in out
    bad = subprocess.run([str(SCRIPT), "--budget", "soon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--budget" in bad.stderr


def test_engine_time_is_read_from_a_bench_json(tmp_path):
    """The fastest engine record at the kernels' batch size; baseline (reference-style) records never count."""
    records = {
        "device": "NVIDIA H200",
        "results": [
            {"backend": "torch", "batch_size": 1, "latency_per_image_ms": {"p50": 40.0, "p90": 41.0}},
            {"backend": "torch", "batch_size": 16, "latency_per_image_ms": {"p50": 22.0, "p90": 23.0}},
            {"backend": "torch", "batch_size": 16, "compile": True, "latency_per_image_ms": {"p50": 18.5}},
            {"name": "baseline (reference style)", "batch_size": 16, "latency_per_image_ms": {"p50": 5.0}},
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(records))
    ms, note = engine_time().engine_ms_from_json(path, 16)
    assert ms == 18.5 and "batch 16" in note
    ms, note = engine_time().engine_ms_from_json(path, 4)
    assert ms is None and "batch size 4" in note
    (tmp_path / "bad.json").write_text("{not json")
    ms, note = engine_time().engine_ms_from_json(tmp_path / "bad.json", 16)
    assert ms is None and "cannot read" in note


def test_summary_reports_the_share_of_noise_and_mean(tmp_path):
    """With no step selected the script only summarises: the kernels' and the engine's JSON give the share."""
    out = tmp_path / "results"
    out.mkdir()
    kernels = {"config": {"batch": 16}, "share_of_engine": {"kernels_ms_per_image": 0.05}}
    (out / "kernels.json").write_text(json.dumps(kernels))
    engine = {"results": [{"batch_size": 16, "latency_per_image_ms": {"p50": 20.0}}]}
    (out / "engine-eager.json").write_text(json.dumps(engine))
    proc = subprocess.run(
        [str(SCRIPT), "--steps", "none", "--budget", "60", str(out)],
        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    share = summary["noise_and_mean_share_of_engine"]
    assert share["fraction"] == pytest.approx(0.05 / 20.0), proc.stdout + proc.stderr
    text = (out / "summary.md").read_text()
    assert "0.25 % of the engine's 20.00 ms per image" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "engine-eager.json", "kernels.json", "steps.log", "summary.json", "summary.md"
    ]  # fmt: skip
    assert proc.returncode == 1  # nothing ran, so not everything passed


def test_a_failing_step_does_not_stop_the_others(tmp_path):
    """Steps that cannot work here (no wheels folder, no GPU for the kernel benchmark) fail alone and are listed."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [str(SCRIPT), "--steps", "wheels,kernels", "--wheels", str(tmp_path / "empty"), "--budget", "200", str(out)],
        capture_output=True, text=True, timeout=400, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )  # fmt: skip
    assert proc.returncode == 1
    steps = {s["step"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    assert set(steps) == {"wheels", "kernels"}
    assert steps["wheels"]["status"] == "failed" and steps["wheels"]["exit_code"] == 1
    assert "no wheels in" in (out / "steps.log").read_text()
    import torch

    if not torch.cuda.is_available():
        assert steps["kernels"]["status"] == "failed"
