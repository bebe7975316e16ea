"""Running a benchmark: every configuration (backend × dtype × batch size), optionally the reference style, one report.

Every configuration gets ``warmup`` untimed calls, then ``iters`` rounds time one call of each configuration per
round (interleaved, so a change in the machine's load affects all of them alike). A call is
``extractor.extract(images)`` followed by the copy of the features to host memory; the extractor reports its stages
to the timer (see :mod:`dift_fast.bench.timers`). Inputs are random uint8 RGB arrays at the configured image size
(decoding files is not part of a call). Peak memory is measured per call; a record keeps its largest rise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ..backends import TORCH_DTYPES
from ..config import BACKENDS, DTYPES, PRESETS, DiftConfig
from ..extractor import STAGES, DiftExtractor, resolve_device, resolve_dtype
from ..identity import dtype_name as dtype_name_of
from ..loading import DiftComponents, load_components
from ..run_flags import tf32_state
from .baseline import ReferenceStyle
from .environment import gpu_processes, machine
from .memory import PeakMemory
from .models import bench_model, random_components
from .peaks import measured_matmul_flops, peak_flops
from .stats import MAX_CV, summarize
from .timers import make_timer

__all__ = ["SCHEMA", "BenchSettings", "run_benchmark"]

logger = logging.getLogger(__name__)

SCHEMA = "dift-fast-bench/2"
BASELINE_DESCRIPTION = "reference style: one image per call, prompt encoded per call, VAE on E copies, fp32"


@dataclass(frozen=True)
class BenchSettings:
    """What to benchmark. Exactly one of ``model`` and ``architecture``; ``None`` fields take the preset's value."""

    model: str | None = None  # hub id, local diffusers folder, ADM checkpoint, "tiny-random" or "tiny-random-adm"
    architecture: str | None = None  # "sd21", "adm256" or a folder of component configs (random weights)
    revision: str | None = None
    preset: str | None = None  # None: the backbone's default preset (spair for SD, adm-spair for ADM)
    backends: tuple[str, ...] = ("torch",)  # each "backend" (with every dtype) or "backend:dtype" (with that one)
    dtypes: tuple[str | None, ...] = (None,)  # None: the device default (fp32 on CPU, bf16 on CUDA)
    compile: bool = False
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    warmup: int = 2
    iters: int = 10
    baseline: bool = False
    device: str | None = None
    image_size: tuple[int, int] | None = None
    ensemble_size: int | None = None
    up_ft_index: int | None = None
    t: int | None = None
    prompt: str | None = None
    engine_dir: str | None = None  # onnxruntime/tensorrt: export folder
    no_build: bool = False
    max_cv: float = MAX_CV
    seed: int = 0  # of the random input images
    threads: int | None = None  # CPU threads of torch and onnxruntime; None: each library's default
    extra_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.architecture is None):
            raise ValueError("give exactly one of model (--model) and architecture (--architecture)")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        pairs = [b.partition(":") for b in self.backends]
        if not pairs or any(b not in BACKENDS or (d and d not in DTYPES) for b, _, d in pairs):
            raise ValueError(
                f"backends {list(self.backends)}: each must be one of {', '.join(BACKENDS)}, optionally with "
                f":dtype ({', '.join(DTYPES)}), e.g. torch:bf16"
            )
        if not self.dtypes or any(d is not None and d not in DTYPES for d in self.dtypes):
            raise ValueError(f"dtypes {list(self.dtypes)}: each must be one of {', '.join(DTYPES)}")
        if not self.batch_sizes or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes
        ):
            raise ValueError(f"batch sizes {list(self.batch_sizes)}: each must be an integer >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup}: must be >= 0")
        if self.iters < 1:
            raise ValueError(f"iters={self.iters}: must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be >= 1")
        if not self.max_cv >= 0:
            raise ValueError(f"max_cv={self.max_cv}: must be >= 0")

    def configurations(self) -> list[tuple[str, str | None]]:
        """(backend, dtype) pairs to run, in order: ``backend:dtype`` items as given, others with every dtype."""
        out: list[tuple[str, str | None]] = []
        for item in self.backends:
            backend, _, dtype = item.partition(":")
            for pair in [(backend, dtype)] if dtype else [(backend, d) for d in self.dtypes]:
                if pair not in out:
                    out.append(pair)
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size) if self.image_size else None
        return data


def _base_config(settings: BenchSettings, model_id: str, preset: str, device: torch.device) -> DiftConfig:
    overrides: dict[str, Any] = {"model": model_id, "device": str(device), **settings.extra_config}
    if settings.revision is not None:
        overrides["revision"] = settings.revision
    for name in ("image_size", "ensemble_size", "up_ft_index", "t", "prompt"):
        value = getattr(settings, name)
        if value is not None:
            overrides[name] = value
    config = DiftConfig.from_preset(preset, **overrides)
    if config.image_size is None:
        raise ValueError(f"preset {preset!r} keeps the images' own size; give --image-size for a benchmark")
    return config


def _inputs(config: DiftConfig, count: int, seed: int) -> list[np.ndarray]:
    w, h = config.image_size
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


def _backend_unavailable(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run here, or None (construction may still fail; that is reported too)."""
    if backend in ("onnxruntime", "tensorrt") and importlib.util.find_spec("dift_fast.export") is None:
        return "dift_fast.export is not installed (pip install 'dift-fast[onnx]')"
    if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'dift-fast[onnx]')"
    if backend == "tensorrt":
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed (pip install tensorrt)"
    return None


@dataclass
class _Site:
    """One configuration to time: its record fields, its call, and what its timed calls measured."""

    base: dict[str, Any]  # kind, backend, dtype, compile, batch_size
    call: Callable[[], Any]
    flops_per_image: int
    peak: dict[str, Any] | None
    calls: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    memory: dict[str, Any] | None = None  # the reading of the call whose memory rose most
    error: str | None = None

    @property
    def name(self) -> str:
        b = self.base
        return f"{b['kind']} {b['backend']} {b['dtype']} batch {b['batch_size']}"


class _Clock:
    """The device's timer and peak-memory meter, and the copy of features to host memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timer = make_timer(device)
        self.memory = PeakMemory(device)
        self._host: dict[tuple[Any, ...], torch.Tensor] = {}

    def to_host(self, feats: torch.Tensor) -> torch.Tensor:
        """Copy to host memory (a reused pinned buffer on CUDA; no wait: the call's end event is the sync)."""
        self.timer.begin("copy_to_host")
        if feats.device.type == "cpu":
            return feats
        key = (tuple(feats.shape), feats.dtype)
        if key not in self._host:
            self._host[key] = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
        return self._host[key].copy_(feats, non_blocking=True)

    def run(self, site: _Site, timed: bool, log: Callable[[str], None]) -> None:
        """One call of ``site``; when ``timed``, its time, stages and memory are kept. A failure ends the site."""
        try:
            if timed:
                self.memory.reset()
            self.timer.start_call()
            site.call()
            self.timer.stop_call()
            call_s, stage_s = self.timer.result()
        except (
            Exception
        ) as err:  # one configuration that breaks (out of memory, non-finite...) must not cost the others
            site.error = f"{type(err).__name__}: {err}"
            log(f"failed: {site.name}: {site.error}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return
        if timed:
            reading = self.memory.read()
            site.calls.append(call_s)
            site.stages.append(stage_s)
            rise = reading["peak_bytes"] - reading["before_bytes"]
            if site.memory is None or rise > site.memory["peak_bytes"] - site.memory["before_bytes"]:
                site.memory = reading


def _time_sites(sites: list[_Site], clock: _Clock, settings: BenchSettings, log: Callable[[str], None]) -> None:
    """Warm every site up, then time them in rounds: one call of each per round, in an order rotated every round.

    Interleaving gives every configuration the same share of whatever else the machine is doing over the run, so
    their ratios stay fair when the load changes midway (on a shared CPU it does).
    """
    for site in sites:
        log(f"{site.name}: {settings.warmup} warm-up call(s)")
        for _ in range(settings.warmup):
            if site.error is None:
                clock.run(site, False, log)
    if not sites:  # every configuration was skipped: nothing to time
        return
    for i in range(settings.iters):
        log(f"timed round {i + 1} of {settings.iters}")
        k = i % len(sites)
        for site in sites[k:] + sites[:k]:
            if site.error is None:
                clock.run(site, True, log)


def _record(site: _Site, settings: BenchSettings) -> dict[str, Any]:
    """The report record of a timed site (see :mod:`dift_fast.bench.report`)."""
    if site.error is not None or not site.calls:
        return _failed(site.base, "failed", site.error or "no timed call")
    batch = site.base["batch_size"]
    names = [s for s in STAGES if any(s in st for st in site.stages)]
    names += sorted({s for st in site.stages for s in st} - set(names))
    calls = summarize(site.calls)
    images_per_s = batch / calls.p50
    achieved = site.flops_per_image * images_per_s
    return {
        **site.base,
        "status": "ok",
        "reason": None,
        "call_s": calls.to_dict(),
        "per_image_s": calls.scaled(1.0 / batch).to_dict(),
        "images_per_s": images_per_s,
        "stages_s": {n: summarize([st.get(n, 0.0) for st in site.stages]).to_dict() for n in names},
        "other_s": summarize([c - sum(st.values()) for c, st in zip(site.calls, site.stages)]).to_dict(),
        "memory": site.memory,
        "flops_per_image": site.flops_per_image,
        "achieved_flops_per_s": achieved,
        "peak_flops": site.peak,
        "peak_share": achieved / site.peak["flops_per_s"] if site.peak else None,
        "cv": calls.cv,
        "stable": calls.cv is not None and calls.cv <= settings.max_cv,
    }


def _failed(base: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    """A configuration that was not measured: ``skipped`` (cannot run here) or ``failed`` (broke while running)."""
    return {**base, "status": status, "reason": reason, "stable": None}


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every configuration of ``settings`` and return the report (see :mod:`dift_fast.bench.report`)."""
    log = log or (lambda message: logger.info("%s", message))
    device = resolve_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    env = machine(device)
    warnings = _environment_warnings(device, env)
    for w in warnings:
        log(f"warning: {w}")

    model_id, default_preset, random_weights = bench_model(settings.model, settings.architecture)
    config = _base_config(settings, model_id, settings.preset or default_preset, device)
    if random_weights:
        log(f"building {settings.architecture} with random weights")
        components: DiftComponents = random_components(config)
        label = f"{settings.architecture} (architecture, random weights)"
    else:
        log("loading the model")
        components, label = load_components(config), str(settings.model)
    costs = components.backbone.costs(config.image_size, config.up_ft_index)
    E = config.ensemble_size
    engine_flops = costs.per_image(E)  # the encoder once + E network passes (the text encoder is not counted)
    reference_flops = costs.reference_per_image(E)  # the encoder and the network on every member
    inputs = _inputs(config, max(settings.batch_sizes), settings.seed)
    clock = _Clock(device)
    peaks = _PeakTable(device, env)
    sites: list[_Site] = []
    skipped: list[dict[str, Any]] = []

    if settings.baseline:
        base = {"kind": "baseline", "backend": "torch", "dtype": "fp32", "compile": False, "batch_size": 1}
        reference = ReferenceStyle(components, config, device)
        reference.stage_recorder = clock.timer
        sites.append(_Site(base, _reference_call(reference, inputs, clock), reference_flops,
                             peaks.get("fp32", tf32=tf32_state().get("cudnn") is not False)))  # torch's own flags

    seen: set[tuple[str, str]] = set()
    for backend, dtype_name in settings.configurations():
        dtype = dtype_name_of(resolve_dtype(dtype_name, device))
        if (backend, dtype) in seen:  # e.g. "torch" and "torch:fp32" on the CPU
            continue
        seen.add((backend, dtype))
        run_config = config.replace(backend=backend, dtype=dtype)
        if settings.compile:
            run_config = run_config.replace(compile=True)
        base = {"kind": "engine", "backend": backend, "dtype": dtype, "compile": settings.compile}
        extractor, reason = _build_extractor(components, run_config, settings, device, log)
        if extractor is None:
            log(f"skipping {backend} {dtype}: {reason}")
            skipped.append(_failed({**base, "batch_size": None}, "skipped", reason))
            continue
        extractor.stage_recorder = clock.timer
        for batch in settings.batch_sizes:
            call = _engine_call(extractor, run_config.replace(batch_size=batch), inputs[:batch], clock)
            sites.append(_Site({**base, "batch_size": batch}, call, engine_flops, peaks.get(dtype, tf32=run_config.tf32)))

    _time_sites(sites, clock, settings, log)
    records = [_record(site, settings) for site in sites] + skipped
    baseline = next((r for r in records if r["kind"] == "baseline" and r["status"] == "ok"), None)
    for record in records:
        ok = record["status"] == "ok" and record["kind"] == "engine"
        record["baseline_ratio"] = record["images_per_s"] / baseline["images_per_s"] if ok and baseline else None
    measured = [r for r in records if r["status"] == "ok"]
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": env,
        "device": str(device),
        "warnings": warnings,
        "model": label,
        "settings": settings.to_dict(),
        "config": config.to_dict(),
        "baseline": BASELINE_DESCRIPTION if settings.baseline else None,
        "costs": {
            "backbone": components.backbone.name,
            "encoder_flops_per_image": costs.encoder_flops,
            "network_flops_per_member": costs.network_flops,
            "engine_flops_per_image": engine_flops,
            "reference_flops_per_image": reference_flops,
            "network_parameters": costs.network_parameters,
            "encoder_parameters": costs.encoder_parameters,
            "text_encoder_parameters": costs.text_encoder_parameters,
        },
        "max_cv": settings.max_cv,
        "stable": bool(measured) and all(r["stable"] for r in measured),
        "records": records,
    }


def _reference_call(reference: ReferenceStyle, inputs: list[np.ndarray], clock: _Clock) -> Callable[[], Any]:
    """One reference-style call: the next input image (they take turns), to host memory."""
    counter = iter(range(1 << 62))
    return lambda: clock.to_host(reference(inputs[next(counter) % len(inputs)]))


def _engine_call(
    extractor: DiftExtractor, config: DiftConfig, images: list[np.ndarray], clock: _Clock
) -> Callable[[], Any]:
    """One engine call at ``config``'s batch size (several sites share one extractor), to host memory."""

    def call() -> torch.Tensor:
        extractor.config = config
        return clock.to_host(extractor.extract(images))

    return call


def _build_extractor(
    components: Any, config: DiftConfig, settings: BenchSettings, device: torch.device, log: Callable[[str], None]
) -> tuple[DiftExtractor | None, str]:
    """The extractor of one configuration, or None and why it cannot run here."""
    reason = _backend_unavailable(config.backend, device)
    if reason is not None:
        return None, reason
    options: dict[str, Any] = {}
    if config.backend != "torch":
        options = {"export_dir": settings.engine_dir, "no_build": settings.no_build}
    if config.backend == "onnxruntime" and settings.threads is not None:
        options["intra_op_threads"] = settings.threads  # the same CPU threads as torch gets
    if config.backend == "tensorrt":
        options["max_batch"] = max(settings.batch_sizes)  # one engine profile serves every batch size
    log(f"building the extractor ({config.backend}, {config.dtype})")
    try:
        return DiftExtractor(components, config, options or None), ""
    except Exception as err:  # a configuration that cannot be built here is skipped, with the reason
        return None, f"{type(err).__name__}: {err}"


def _environment_warnings(device: torch.device, env: dict[str, Any]) -> list[str]:
    """Other work that would distort the timings: processes on the GPU, or a busy CPU."""
    out = []
    if device.type == "cuda":
        others, note = gpu_processes()
        if note:
            out.append(note)
        elif others:
            listed = ", ".join(f"{p['name']} (pid {p['pid']}, {p['used_memory_mib']} MiB)" for p in others[:5])
            out.append(f"{len(others)} other process(es) use a GPU: {listed}; timings may be disturbed")
    load, cores = env.get("load_average"), env.get("cores") or 1
    if load and load[0] > 0.5 * cores:
        out.append(
            f"load average {load[0]:.2f} on {cores} cores before the run: other work competes for the CPU"
            + (" (the CPU prepares inputs and launches the GPU's work)" if device.type == "cuda" else "")
        )
    return out


class _PeakTable:
    """The device's peak FLOP/s per dtype: the datasheet table for known GPUs, else a measured matmul (GPU only)."""

    def __init__(self, device: torch.device, env: dict[str, Any]) -> None:
        self.device = device
        self.name = env.get("gpu") or ""
        self._cache: dict[str, dict[str, Any] | None] = {}

    def get(self, dtype: str, *, tf32: bool) -> dict[str, Any] | None:
        """The device's peak for ``dtype``; fp32 carries a note when TF32 was allowed in the measured calls."""
        if self.device.type != "cuda":
            return None
        if dtype not in self._cache:
            peak = peak_flops(self.name, dtype)
            if peak is None:
                torch_dtype = TORCH_DTYPES[dtype]
                peak = {
                    "flops_per_s": measured_matmul_flops(self.device, torch_dtype),
                    "label": self.name,
                    "source": f"measured: 8192x8192 {dtype} matmul (device not in the datasheet table)",
                }
            self._cache[dtype] = peak
        peak = self._cache[dtype]
        if dtype == "fp32" and tf32 and peak is not None:
            peak = {**peak, "note": "TF32 tensor cores allowed (matmuls and convolutions may round to TF32)"}
        return peak


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)`` (positive, no duplicates, order kept)."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if not sizes or any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"--batch-sizes {text!r}: expected distinct integers >= 1, e.g. 1,4,16")
    return sizes


def parse_backends(text: str) -> tuple[str, ...]:
    """``"torch,onnxruntime:fp32"`` -> ``("torch", "onnxruntime:fp32")`` (checked by :class:`BenchSettings`)."""
    items = tuple(v.strip() for v in text.split(",") if v.strip())
    if not items:
        raise ValueError(f"--backend {text!r}: give one or more of {', '.join(BACKENDS)} (optionally backend:dtype)")
    return items


def parse_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, each from ``allowed``."""
    items = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if not items or bad:
        raise ValueError(f"{option} {text!r}: each must be one of {', '.join(allowed)}")
    return items
