"""`dift-fast bench` and `dift_fast.bench`: schema and internal consistency of the numbers, never timing thresholds."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast.architectures import architecture_dir
from dift_fast.bench import BenchSettings, run_benchmark, summarize
from dift_fast.bench.environment import gpu_processes
from dift_fast.bench.memory import PeakMemory
from dift_fast.bench.models import bench_model, fill_random_, random_components
from dift_fast.bench.peaks import peak_flops
from dift_fast.bench.report import format_table, instability, write_json
from dift_fast.bench.stats import percentile
from dift_fast.bench.timers import PerfCounterTimer
from dift_fast.cli import main
from dift_fast.config import DiftConfig
from dift_fast.extractor import STAGES
from dift_fast.tiny import tiny_component_configs

# Sum of stage intervals vs the enclosing call interval: both are differences of the same perf_counter readings, so
# they can differ only by float rounding of a few seconds' worth of doubles (~1e-15 s); 1 ns is far above that.
ROUNDING_S = 1e-9
TINY = {"image_size": (64, 48), "ensemble_size": 2, "device": "cpu"}


# two threads on the shared 2-core machine make the timings noisy, not the tests wrong
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_report(tiny_model_dir):
    """One benchmark of the tiny model: baseline + batch sizes 1 and 3 (the last call of 3 images is a 2+1 split)."""
    settings = BenchSettings(model=str(tiny_model_dir), batch_sizes=(1, 3), warmup=1, iters=3, baseline=True, **TINY)
    return run_benchmark(settings)


def _check_summary(summary: dict, values: list[float] | None = None) -> None:
    vals = summary["values"] if values is None else values
    assert summary["values"] == pytest.approx(vals)
    assert summary["p50"] == pytest.approx(np.percentile(vals, 50))
    assert summary["p90"] == pytest.approx(np.percentile(vals, 90))
    assert summary["p99"] == pytest.approx(np.percentile(vals, 99))
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]


def test_report_schema_and_consistent_numbers(tiny_report):
    report = tiny_report
    assert report["schema"] == "dift-fast-bench/2" and report["device"] == "cpu"
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] == torch.__version__
    costs = report["costs"]
    E = report["config"]["ensemble_size"]
    assert costs["backbone"] == "sd" and costs["encoder_flops_per_image"] > 0
    assert costs["engine_flops_per_image"] == costs["encoder_flops_per_image"] + E * costs["network_flops_per_member"]
    assert costs["reference_flops_per_image"] == E * (
        costs["encoder_flops_per_image"] + costs["network_flops_per_member"]
    )
    records = report["records"]
    assert [(r["kind"], r["batch_size"], r["status"]) for r in records] == [
        ("baseline", 1, "ok"),
        ("engine", 1, "ok"),
        ("engine", 3, "ok"),
    ]
    baseline = records[0]
    for r in records:
        batch, calls = r["batch_size"], r["call_s"]["values"]
        assert len(calls) == 3
        _check_summary(r["call_s"])
        _check_summary(r["per_image_s"], [c / batch for c in calls])  # per image = per call / batch
        assert r["images_per_s"] == pytest.approx(batch / r["call_s"]["p50"])
        cv = float(np.std(calls, ddof=1) / np.mean(calls))
        assert r["cv"] == pytest.approx(cv) and r["stable"] == (cv <= report["max_cv"])
        assert set(r["stages_s"]) == set(STAGES)  # every stage was reported, engine and reference alike
        for i, call in enumerate(calls):
            stages = [s["values"][i] for s in r["stages_s"].values()]
            assert all(v >= 0 for v in stages)
            assert sum(stages) <= call + ROUNDING_S  # stages nest inside the call and do not overlap
            assert r["other_s"]["values"][i] == pytest.approx(call - sum(stages))
        assert r["memory"]["kind"] and r["memory"]["peak_bytes"] >= r["memory"]["before_bytes"] > 0
        flops = costs["reference_flops_per_image" if r["kind"] == "baseline" else "engine_flops_per_image"]
        assert r["flops_per_image"] == flops
        assert r["achieved_flops_per_s"] == pytest.approx(flops * r["images_per_s"])
        assert r["peak_flops"] is None and r["peak_share"] is None  # no datasheet peak for a CPU
        if r["kind"] == "engine":
            assert r["baseline_ratio"] == pytest.approx(r["images_per_s"] / baseline["images_per_s"])
            assert r["baseline_ratio"] == pytest.approx(baseline["per_image_s"]["p50"] / r["per_image_s"]["p50"])
        else:
            assert r["baseline_ratio"] is None
    assert report["stable"] == all(r["stable"] for r in records)


def test_report_round_trips_through_json_and_table(tiny_report, tmp_path):
    path = write_json({**tiny_report, "extra": float("nan")}, tmp_path / "sub" / "bench.json")
    loaded = json.loads(path.read_text())  # strict JSON: NaN became null
    assert loaded["extra"] is None and loaded["records"] == json.loads(json.dumps(tiny_report["records"]))
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temporary file left behind
    table = format_table(tiny_report)
    assert "reference style (fp32)" in table and "| torch fp32 | 3 |" in table
    assert "load average" in table and "64x48, E=2" in table


def test_stage_recorder_sees_every_stage_and_changes_nothing(tiny_extractor_factory, rng):
    class Log:
        def __init__(self):
            self.events = []

        def begin(self, name):
            self.events.append(name)

        def end(self):
            self.events.append("end")

    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    ext = tiny_extractor_factory(batch_size=2)
    plain = ext.extract(images)
    ext.stage_recorder = log = Log()
    recorded = ext.extract(images)
    assert torch.equal(plain, recorded)
    # per micro-batch: the noise stage opens for the explicit-noise copy (none here) and again for x_t
    per_batch = ["preprocess", "encoder", "noise", "prompt", "noise", "unet", "reduce"]
    finish = ["reduce", "end"]  # concatenation and the call's one finite-check read
    assert log.events == ["preprocess", "end", *per_batch, *per_batch, *finish]  # two micro-batches (2 + 1 images)
    log.events.clear()
    grid = ext.extract_grid(images[:2], timesteps=(101, 261))  # one micro-batch, one pass per t
    per_t = ["noise", "unet", "reduce"]
    assert log.events == ["preprocess", "end", "preprocess", "encoder", "noise", "prompt", *per_t, *per_t, *finish]
    ext.stage_recorder = Log()
    assert torch.equal(grid[(101, 1)], ext.extract_grid(images[:2], timesteps=(101, 261))[(101, 1)])


def test_each_side_is_measured_even_if_the_other_fails(tiny_model_dir, monkeypatch):
    from dift_fast.bench import baseline

    def broken(self, image, prompt=None):
        raise RuntimeError("reference broke")

    monkeypatch.setattr(baseline.ReferenceStyle, "__call__", broken)
    settings = BenchSettings(model=str(tiny_model_dir), batch_sizes=(1,), warmup=0, iters=2, baseline=True, **TINY)
    records = run_benchmark(settings)["records"]
    assert [(r["kind"], r["status"]) for r in records] == [("baseline", "failed"), ("engine", "ok")]
    assert records[0]["reason"] == "RuntimeError: reference broke" and records[1]["baseline_ratio"] is None
    monkeypatch.undo()

    def non_finite(self, images, prompt=None, **kwargs):
        raise FloatingPointError("non-finite features")

    monkeypatch.setattr("dift_fast.extractor.DiftExtractor.extract", non_finite)
    records = run_benchmark(settings)["records"]
    assert [(r["kind"], r["status"]) for r in records] == [("baseline", "ok"), ("engine", "failed")]
    assert "non-finite" in records[1]["reason"]


def test_configurations_are_timed_in_interleaved_rotating_rounds():
    from dift_fast.bench.runner import _Clock, _Site, _time_sites

    order = []

    def call_of(name, fail_on_call=None):
        def call():
            order.append(name)
            if order.count(name) == fail_on_call:
                raise RuntimeError("out of memory")

        return call

    sites = [
        _Site({"kind": "engine", "backend": "torch", "dtype": "fp32", "batch_size": b}, call_of(n, f), 1, None)
        for b, n, f in ((1, "a", None), (2, "b", None), (4, "c", 3))
    ]
    settings = BenchSettings(model="m", warmup=1, iters=3)
    _time_sites(sites, _Clock(torch.device("cpu")), settings, log=lambda message: None)
    # warm-up a b c, then rounds a b c | b c a | c a b; c fails on its third call and is not called again
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "a", "b"]
    assert [len(s.calls) for s in sites] == [3, 3, 1] and sites[2].error == "RuntimeError: out of memory"


def test_configurations_combine_backends_and_dtypes():
    settings = BenchSettings(model="m", backends=("torch", "onnxruntime:fp32"), dtypes=("fp32", "bf16"))
    assert settings.configurations() == [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32")]
    for bad in ("torch:int8", "jax"):
        with pytest.raises(ValueError, match="torch:bf16"):
            BenchSettings(model="m", backends=(bad,))


def test_perf_counter_timer_accumulates_recurring_stages():
    timer = PerfCounterTimer()
    timer.start_call()
    for _ in range(3):
        timer.begin("unet")
        timer.begin("reduce")
    timer.stop_call()
    call, stages = timer.result()
    assert set(stages) == {"unet", "reduce"} and sum(stages.values()) <= call + ROUNDING_S
    timer.start_call()  # a new call starts from nothing
    timer.stop_call()
    assert timer.result()[1] == {}


def test_percentiles_and_summary_match_numpy(rng):
    values = list(rng.exponential(size=37))
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    s = summarize(values)
    assert s.cv == pytest.approx(np.std(values, ddof=1) / np.mean(values))
    assert s.scaled(0.25).p90 == pytest.approx(np.percentile(values, 90) * 0.25)
    assert summarize([3.0]).cv is None
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_peak_memory_sees_an_allocation_between_reset_and_read():
    meter = PeakMemory(torch.device("cpu"))
    meter.reset()
    if not meter.kind.startswith("resident-set"):
        pytest.skip(f"cannot reset the resident high-water mark here ({meter.kind})")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written (resident)
    del block
    reading = meter.read()
    assert reading["peak_bytes"] - reading["before_bytes"] >= 60 * 2**20


def test_cli_refuses_to_report_an_unstable_run(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--model", str(tiny_model_dir), "--device", "cpu", "--image-size", "64x48"]
    args += ["--ensemble-size", "1", "--batch-sizes", "1", "--warmup", "0", "--out", str(out)]
    # --max-cv 0: any spread at all is too much (timings of real calls are never all equal to the nanosecond).
    assert main([*args, "--iters", "2", "--max-cv", "0"]) == 3
    err = capsys.readouterr().err
    assert "not reporting" in err and "CV" in err and "--allow-noisy" in err and not out.exists()
    assert main([*args, "--iters", "1"]) == 3  # one call cannot show stability
    assert "one timed call" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--iters", "2", "--max-cv", "0", "--allow-noisy"]) == 0
    report = json.loads(out.read_text())
    assert report["stable"] is False and report["records"][0]["stable"] is False
    assert "(noisy)" in capsys.readouterr().out
    assert instability(report)


def test_cli_skips_unavailable_backend_with_reason_and_plots(tiny_model_dir, tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["bench", "--model", str(tiny_model_dir), "--device", "cpu", "--image-size", "64x48", "--ensemble-size", "1"]
    args += ["--backend", "torch,tensorrt", "--batch-sizes", "1,2", "--warmup", "0", "--iters", "2", "--allow-noisy"]
    assert main([*args, "--out", str(out), "--plot", str(png)]) == 0
    records = json.loads(out.read_text())["records"]
    skipped = [r for r in records if r["status"] == "skipped"]
    assert [(r["backend"], r["reason"]) for r in skipped] == [("tensorrt", "TensorRT needs a CUDA device")]
    assert [r["batch_size"] for r in records if r["status"] == "ok"] == [1, 2]
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height
    replot = tmp_path / "again.png"
    assert main(["bench", "--replot", str(out), str(out), "--plot", str(replot)]) == 0 and replot.is_file()
    (tmp_path / "bad.json").write_text("{}")
    assert main(["bench", "--replot", str(tmp_path / "bad.json"), "--plot", str(replot)]) == 2
    assert "not a dift-fast bench report" in capsys.readouterr().err


def test_compile_sets_the_config_and_every_record_says_so(tiny_model_dir, monkeypatch):
    """--compile reaches DiftConfig.compile (torch.compile itself is tested in test_fast_paths)."""
    from dift_fast.bench import runner

    built = []

    class Spy(runner.DiftExtractor):
        def __init__(self, components, config, *args, **kwargs):
            built.append(config)
            raise RuntimeError("not built: the test only looks at the config")

    monkeypatch.setattr(runner, "DiftExtractor", Spy)
    settings = BenchSettings(model=str(tiny_model_dir), compile=True, batch_sizes=(1,), warmup=0, iters=2, **TINY)
    report = run_benchmark(settings)
    assert [c.compile for c in built] == [True]
    assert report["settings"]["compile"] is True
    assert [(r["compile"], r["status"]) for r in report["records"]] == [(True, "skipped")]


def _write_architecture(folder):
    configs = tiny_component_configs()
    for name, file in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json")):
        (folder / name).mkdir(parents=True)
        (folder / name / file).write_text(json.dumps(configs[name]))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))
    return folder


def test_architecture_folder_runs_with_random_weights(tmp_path):
    folder = _write_architecture(tmp_path / "arch")
    report = run_benchmark(BenchSettings(architecture=str(folder), batch_sizes=(1,), warmup=0, iters=2, **TINY))
    assert "architecture, random weights" in report["model"] and report["config"]["preset"] == "spair"
    assert report["records"][0]["status"] == "ok"


def test_adm_architecture_folder_runs_with_the_adm_preset_and_baseline(tmp_path):
    from dift_fast.tiny import tiny_adm_config

    folder = tmp_path / "adm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_adm_config()))
    settings = BenchSettings(
        architecture=str(folder),
        device="cpu",
        image_size=(32, 32),
        ensemble_size=2,
        up_ft_index=1,
        batch_sizes=(1, 2),
        warmup=0,
        iters=2,
        baseline=True,
    )
    report = run_benchmark(settings)
    assert report["config"]["backbone"] == "adm" and report["config"]["preset"] == "adm-spair"
    assert [(r["kind"], r["status"]) for r in report["records"]] == [
        ("baseline", "ok"),
        ("engine", "ok"),
        ("engine", "ok"),
    ]
    costs = report["costs"]
    assert costs["backbone"] == "adm" and costs["encoder_flops_per_image"] == 0
    assert (
        costs["engine_flops_per_image"] == costs["reference_flops_per_image"] == 2 * costs["network_flops_per_member"]
    )
    baseline = report["records"][0]["stages_s"]
    assert "encoder" not in baseline and "prompt" not in baseline  # pixel space, no text: neither runs
    assert {"noise", "unet", "reduce"} <= set(baseline)


def test_random_weights_are_deterministic_with_the_default_init_scale(tmp_path):
    folder = _write_architecture(tmp_path / "arch")
    config = DiftConfig.from_preset("spair", model=str(folder), up_ft_index=1)
    a, b = random_components(config), random_components(config)
    for (name, pa), pb in zip(a.unet.named_parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb), name
    conv = a.unet.conv_in
    bound = 1 / math.sqrt(conv.weight[0].numel())
    assert conv.weight.abs().max() <= bound and conv.weight.std() > bound / 3  # U(-b, b) has std b / sqrt(3)
    norm = a.unet.down_blocks[0].resnets[0].norm1
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert torch.equal(a.text_encoder.get_input_embeddings().weight, b.text_encoder.get_input_embeddings().weight)
    (ids,) = (buf for name, buf in a.text_encoder.named_buffers() if name.endswith("position_ids"))
    assert torch.equal(ids[0], torch.arange(ids.shape[-1]))
    with pytest.raises(NotImplementedError, match="buffer 'running_mean'"):
        fill_random_(torch.nn.BatchNorm1d(3))


def test_random_components_for_several_blocks_share_one_network(tmp_path):
    folder = _write_architecture(tmp_path / "arch")
    config = DiftConfig.from_preset("spair", model=str(folder), up_ft_index=2)
    made = random_components(config, blocks=(0, 2))
    assert sorted(made) == [0, 2] and made[0].block == 0 and made[2].block == 2
    assert made[0].network.conv_in is made[2].network.conv_in  # views of one network, not copies
    assert made[0].network.up_blocks[0] is made[2].network.up_blocks[0]
    assert not any(p.is_meta for p in made[2].network.parameters())


def test_architecture_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a built-in architecture"):
        bench_model(None, str(tmp_path / "missing"))
    (tmp_path / "half" / "unet").mkdir(parents=True)
    (tmp_path / "half" / "unet" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"missing vae/config\.json"):
        bench_model(None, str(tmp_path / "half"))
    with pytest.raises(ValueError, match="exactly one"):
        bench_model("tiny-random", "sd21")
    model, preset, random_weights = bench_model(None, "sd21")
    assert Path(model) == architecture_dir("sd21") and preset == "spair" and random_weights
    assert bench_model(None, "adm256") == ("adm256", "adm-spair", True)
    assert bench_model("tiny-random", None) == ("tiny-random", "spair", False)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"),
        ("Some Future GPU", None),
    ],
)
def test_peak_table_matches_device_names(name, label):
    peak = peak_flops(name, "bf16")
    assert (peak["label"] if peak else None) == label
    if peak:
        assert peak_flops(name, "fp32")["flops_per_s"] < peak["flops_per_s"]  # tensor cores beat FP32 everywhere


def test_gpu_process_check_says_when_it_cannot_look(monkeypatch):
    import dift_fast.bench.environment as env

    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    assert gpu_processes() == (
        [],
        "nvidia-smi is not available here, so other processes on the GPU could not be checked",
    )
    lines = [f"{os.getpid()}, python, 100", "4242, other-trainer, 2048", "garbage"]
    monkeypatch.setattr(env, "_nvidia_smi", lambda *query: lines)
    assert gpu_processes() == ([{"pid": 4242, "name": "other-trainer", "used_memory_mib": 2048}], None)


# Issue 14's "Done when" command lines; --allow-noisy and --out are added so that the JSON is written on this shared
# machine whatever its load (a noisy run is refused otherwise: test_cli_refuses_to_report_an_unstable_run).
DONE_WHEN = [
    "bench",
    "--device",
    "cpu",
    "--image-size",
    "64x64",
    "--ensemble-size",
    "2",
    "--batch-sizes",
    "1,2",
    "--iters",
    "3",
    "--baseline",
    "--allow-noisy",
]


def _check_done_when_report(report: dict) -> None:
    """p50/p90/p99 per stage, images/s, peak memory and the baseline ratio, for the baseline and batch sizes 1, 2."""
    records = report["records"]
    assert [(r["kind"], r["batch_size"], r["status"]) for r in records] == [
        ("baseline", 1, "ok"),
        ("engine", 1, "ok"),
        ("engine", 2, "ok"),
    ]
    for r in records:
        assert {"preprocess", "encoder", "noise", "prompt", "unet", "reduce", "copy_to_host"} <= set(r["stages_s"])
        for stage in r["stages_s"].values():
            assert len(stage["values"]) == 3 and stage["p50"] <= stage["p90"] <= stage["p99"]
        assert r["images_per_s"] > 0 and r["per_image_s"]["p50"] > 0
        assert r["memory"]["peak_bytes"] >= r["memory"]["before_bytes"] > 0
        assert (r["baseline_ratio"] is None) == (r["kind"] == "baseline")
        if r["kind"] == "engine":
            assert r["baseline_ratio"] == pytest.approx(r["images_per_s"] / records[0]["images_per_s"])


def _engine_time():
    """benchmarks/engine_time.py: what scripts/gpu_check.sh's summary reads from the bench's JSON."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import engine_time
    finally:
        sys.path.remove(benchmarks)
    return engine_time


def test_done_when_tiny_random_and_the_gpu_check_reads_its_json(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert main([*DONE_WHEN, "--model", "tiny-random", "--out", str(out)]) == 0
    assert "reference style (fp32)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    _check_done_when_report(report)
    engine = {r["batch_size"]: r for r in report["records"] if r["kind"] == "engine"}
    read = _engine_time().engine_ms_from_json
    for batch in (1, 2):
        ms, note = read(out, batch)
        assert ms == pytest.approx(engine[batch]["per_image_s"]["p50"] * 1e3) and ms > 0, note
    # the baseline record (batch 1) is never taken, even when it is the fastest at that batch size
    report["records"][0]["per_image_s"]["p50"] = engine[1]["per_image_s"]["p50"] / 100
    faster = tmp_path / "baseline-fastest.json"
    faster.write_text(json.dumps(report))
    ms, _ = read(faster, 1)
    assert ms == pytest.approx(engine[1]["per_image_s"]["p50"] * 1e3)


def test_done_when_sd21_architecture(tmp_path):
    """The built-in SD 2.1 architecture (5 GB of random fp32 weights; about a minute here) with the baseline."""
    out = tmp_path / "sd21.json"
    assert main([*DONE_WHEN, "--architecture", "sd21", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    _check_done_when_report(report)
    assert report["model"] == "sd21 (architecture, random weights)"
    assert abs(report["costs"]["network_parameters"] / 774e6 - 1) < 0.005  # the spec's 774 M to block 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_events_time_the_stages_of_a_gpu_run(tiny_model_dir):
    report = run_benchmark(
        BenchSettings(
            model=str(tiny_model_dir),
            device="cuda",
            image_size=(64, 48),
            ensemble_size=2,
            batch_sizes=(1, 4),
            warmup=1,
            iters=3,
            baseline=True,
        )
    )
    assert all(r["status"] == "ok" for r in report["records"])
    for r in report["records"]:
        assert r["memory"]["kind"] == "cuda max_memory_allocated"
        assert r["peak_flops"] is not None and r["peak_share"] > 0
        for i, call in enumerate(r["call_s"]["values"]):
            # CUDA events resolve about 0.5 us; the stages are disjoint intervals inside the call's two events.
            assert sum(s["values"][i] for s in r["stages_s"].values()) <= call + 1e-5
