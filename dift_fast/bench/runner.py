"""Running a benchmark: every configuration (backend × dtype × batch size), optionally the reference style, one report.

Per configuration: ``warmup`` untimed calls, then ``iters`` timed calls of ``batch_size`` images each. A call is
``extractor.extract(images)`` followed by the copy of the features to host memory; its stages are reported by the
extractor to the timer (see :mod:`dift_fast.bench.timers`). Inputs are random uint8 RGB arrays at the configured
image size (decoding files is not part of a call).
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

from ..config import BACKENDS, DTYPES, PRESETS, DiftConfig
from ..extractor import STAGES, DiftExtractor, resolve_device, resolve_dtype
from .baseline import ReferenceStyle
from .environment import gpu_processes, machine
from .memory import PeakMemory
from .models import load_bench_components
from .peaks import measured_matmul_flops, peak_flops
from .stats import MAX_CV, summarize
from .timers import make_timer

__all__ = ["SCHEMA", "BenchSettings", "compile_supported", "run_benchmark"]

logger = logging.getLogger(__name__)

SCHEMA = "dift-fast-bench/1"
BASELINE_DESCRIPTION = "reference style: one image per call, prompt encoded per call, VAE on E copies, fp32"


def compile_supported() -> bool:
    """Whether this version's :class:`DiftConfig` has the ``compile`` option."""
    return "compile" in {f.name for f in dataclasses.fields(DiftConfig)}


@dataclass(frozen=True)
class BenchSettings:
    """What to benchmark. Exactly one of ``model`` and ``architecture``; ``None`` fields take the preset's value."""

    model: str | None = None  # hub id, local diffusers folder or "tiny-random"
    architecture: str | None = None  # "sd21" or a folder of component configs (random weights)
    revision: str | None = None
    preset: str = "spair"
    backends: tuple[str, ...] = ("torch",)
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
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        if not self.backends or any(b not in BACKENDS for b in self.backends):
            raise ValueError(f"backends {list(self.backends)}: each must be one of {', '.join(BACKENDS)}")
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
        if self.compile and not compile_supported():
            raise ValueError(
                "--compile is not available in this version of dift-fast (DiftConfig has no compile option)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size) if self.image_size else None
        return data


def _base_config(settings: BenchSettings, model_id: str, device: torch.device) -> DiftConfig:
    overrides: dict[str, Any] = {"model": model_id, "device": str(device), **settings.extra_config}
    for name in ("image_size", "ensemble_size", "up_ft_index", "t", "prompt"):
        value = getattr(settings, name)
        if value is not None:
            overrides[name] = value
    config = DiftConfig.from_preset(settings.preset, **overrides)
    if config.image_size is None:
        raise ValueError(f"preset {settings.preset!r} keeps the images' own size; give --image-size for a benchmark")
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


class _Measurer:
    """Times calls of one kind on one device and turns them into a record."""

    def __init__(self, device: torch.device, settings: BenchSettings, log: Callable[[str], None]) -> None:
        self.device = device
        self.settings = settings
        self.log = log
        self.timer = make_timer(device)
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

    def measure(self, call: Callable[[], Any], images_per_call: int) -> dict[str, Any]:
        for _ in range(self.settings.warmup):
            self.timer.start_call()
            call()
            self.timer.stop_call()
            self.timer.result()
        memory = PeakMemory(self.device)
        memory.reset()
        calls, stages = [], []
        for _ in range(self.settings.iters):
            self.timer.start_call()
            call()
            self.timer.stop_call()
            call_s, stage_s = self.timer.result()
            calls.append(call_s)
            stages.append(stage_s)
        names = [s for s in STAGES if any(s in st for st in stages)]
        names += sorted({s for st in stages for s in st} - set(names))
        call_summary = summarize(calls)
        cv = call_summary.cv
        return {
            "status": "ok",
            "reason": None,
            "batch_size": images_per_call,
            "call_s": call_summary.to_dict(),
            "image_s": call_summary.scaled(1.0 / images_per_call).to_dict(),
            "images_per_s": images_per_call / call_summary.p50,
            "stages_s": {n: summarize([st.get(n, 0.0) for st in stages]).to_dict() for n in names},
            "other_s": summarize([c - sum(st.values()) for c, st in zip(calls, stages)]).to_dict(),
            "memory": memory.read(),
            "cv": cv,
            "stable": cv is not None and cv <= self.settings.max_cv,
        }


def _failed(base: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    """A configuration that was not measured: ``skipped`` (cannot run here) or ``failed`` (broke while running)."""
    return {**base, "status": status, "reason": reason, "stable": None}


def _measure_or_fail(
    measurer: _Measurer, base: dict[str, Any], call: Callable[[], Any], batch: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Measure ``call``; a failure (out of memory, non-finite features...) becomes a ``failed`` record."""
    try:
        return {**base, **measurer.measure(call, batch)}
    except Exception as err:  # one configuration that breaks must not cost the others
        reason = f"{type(err).__name__}: {err}"
        log(f"failed: {base['kind']} {base['backend']} {base['dtype']} batch {batch}: {reason}")
        if measurer.device.type == "cuda":
            torch.cuda.empty_cache()
        return _failed({**base, "batch_size": batch}, "failed", reason)


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

    log("loading the model" if settings.model else f"building {settings.architecture} with random weights")
    components, label = load_bench_components(
        settings.model, settings.architecture, _up_ft_index(settings), settings.revision
    )
    config = _base_config(settings, components.model_id, device)
    from ..flops import measure_component_costs

    costs = measure_component_costs(components, config.image_size)
    E = config.ensemble_size
    engine_flops = costs.per_image(E)
    reference_flops = costs.reference_per_image(E) + (costs.text_encoder_flops or 0)
    inputs = _inputs(config, max(settings.batch_sizes), settings.seed)
    measurer = _Measurer(device, settings, log)
    peaks = _PeakTable(device, env)
    records: list[dict[str, Any]] = []

    if settings.baseline:  # first: the engine may cast the shared networks to a lower precision in place
        log(f"baseline ({BASELINE_DESCRIPTION})")
        base = {"kind": "baseline", "backend": "torch", "dtype": "fp32", "compile": False}
        reference = ReferenceStyle(components, config, device)
        reference.stage_recorder = measurer.timer
        counter = iter(range(1 << 62))

        def reference_call() -> torch.Tensor:
            return measurer.to_host(reference(inputs[next(counter) % len(inputs)]))

        record = _measure_or_fail(measurer, base, reference_call, 1, log)
        if record["status"] == "ok":
            record.update(_flop_fields(record, reference_flops, peaks.get("fp32")))
        records.append(record)
        del reference, reference_call

    for backend in settings.backends:
        for dtype_name in settings.dtypes:
            dtype = _dtype_name(resolve_dtype(dtype_name, device))
            records += _run_engine(
                components,
                config.replace(backend=backend, dtype=dtype),
                settings,
                measurer,
                inputs,
                engine_flops,
                peaks.get(dtype) if device.type == "cuda" else None,
                log,
            )

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
            "vae_flops_per_image": costs.vae_flops,
            "unet_flops_per_member": costs.unet_flops,
            "text_encoder_flops_per_prompt": costs.text_encoder_flops,
            "engine_flops_per_image": engine_flops,
            "reference_flops_per_image": reference_flops,
            "truncated_unet_parameters": costs.unet_parameters,
            "vae_encoder_parameters": costs.vae_encoder_parameters,
        },
        "max_cv": settings.max_cv,
        "stable": bool(measured) and all(r["stable"] for r in measured),
        "records": records,
    }


def _run_engine(
    components: Any,
    config: DiftConfig,
    settings: BenchSettings,
    measurer: _Measurer,
    inputs: list[np.ndarray],
    flops_per_image: int,
    peak: dict[str, Any] | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The records of one engine configuration (backend, dtype) at every batch size, or one ``skipped`` record."""
    backend, dtype = config.backend, config.dtype
    base = {"kind": "engine", "backend": backend, "dtype": dtype, "compile": settings.compile}
    reason = _backend_unavailable(backend, measurer.device)
    options: dict[str, Any] = {}
    if backend != "torch":
        options = {k: v for k, v in (("engine_dir", settings.engine_dir), ("no_build", settings.no_build)) if v}
    if backend == "onnxruntime" and settings.threads is not None:
        options["intra_op_threads"] = settings.threads  # the same CPU threads as torch gets
    if reason is None:
        try:
            log(f"building the extractor ({backend}, {dtype})")
            extractor = DiftExtractor(
                components, config.replace(compile=True) if settings.compile else config, **options
            )
        except Exception as err:  # a configuration that cannot be built here is skipped, with the reason
            reason = f"{type(err).__name__}: {err}"
    if reason is not None:
        log(f"skipping {backend} {dtype}: {reason}")
        return [_failed({**base, "batch_size": None}, "skipped", reason)]
    extractor.stage_recorder = measurer.timer
    records = []
    for batch in settings.batch_sizes:
        log(f"{backend} {dtype} batch {batch}: {settings.warmup} warm-up + {settings.iters} timed calls")
        extractor.config = extractor.config.replace(batch_size=batch)
        images = inputs[:batch]
        record = _measure_or_fail(measurer, base, lambda: measurer.to_host(extractor.extract(images)), batch, log)  # noqa: B023
        if record["status"] == "ok":
            record.update(_flop_fields(record, flops_per_image, peak))
        records.append(record)
    return records


def _up_ft_index(settings: BenchSettings) -> int:
    if settings.up_ft_index is not None:
        return settings.up_ft_index
    return PRESETS[settings.preset].get("up_ft_index", DiftConfig.up_ft_index)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


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

    def get(self, dtype: str) -> dict[str, Any] | None:
        if self.device.type != "cuda":
            return None
        if dtype not in self._cache:
            peak = peak_flops(self.name, dtype)
            if peak is None:
                torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
                peak = {
                    "flops_per_s": measured_matmul_flops(self.device, torch_dtype),
                    "label": self.name,
                    "source": f"measured: 8192x8192 {dtype} matmul (device not in the datasheet table)",
                }
            if dtype == "fp32" and torch.backends.cudnn.allow_tf32:
                peak = {**peak, "note": "convolutions may use TF32 tensor cores (torch.backends.cudnn.allow_tf32)"}
            self._cache[dtype] = peak
        return self._cache[dtype]


def _flop_fields(record: dict[str, Any], flops_per_image: int, peak: dict[str, Any] | None) -> dict[str, Any]:
    achieved = flops_per_image * record["images_per_s"]
    return {
        "flops_per_image": flops_per_image,
        "achieved_flops_per_s": achieved,
        "peak_flops": peak,
        "peak_share": achieved / peak["flops_per_s"] if peak else None,
    }


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)`` (positive, no duplicates, order kept)."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if not sizes or any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"--batch-sizes {text!r}: expected distinct integers >= 1, e.g. 1,4,16")
    return sizes


def parse_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, each from ``allowed``."""
    items = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if not items or bad:
        raise ValueError(f"{option} {text!r}: each must be one of {', '.join(allowed)}")
    return items
