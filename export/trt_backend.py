"""The ``tensorrt`` backend: TensorRT engines built from an export folder's ONNX graphs.

Written against the TensorRT 10 and 11 Python API. Networks are strongly typed, so precision comes from the ONNX
graph (fp32, or fp16/bf16 with fp32 GroupNorm and softmax); TensorRT 11 is strongly typed only, and the flag is
passed to TensorRT 10 only. Each graph gets one optimisation profile: batch 1..max_batch (and a spatial range
for dynamic-size exports). Engines live in ``<export>/tensorrt/`` as ``<graph>.plan`` with ``<graph>.plan.json``,
keyed by (ONNX hash, TensorRT version, GPU name and compute capability, profile); a plan whose manifest does not
match is rebuilt (or refused under ``no_build``). A timing cache in the same folder makes rebuilds faster.

Engines run with ``execute_async_v3`` on torch CUDA tensors on torch's current stream, optionally replayed from
a CUDA graph captured per input shape.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .graphs import EXPORT_DTYPES, feature_hw
from .manifest import file_sha256, stable_hash
from .ort_backend import resolve_export

__all__ = [
    "ENGINE_FORMAT",
    "GpuInfo",
    "Profile",
    "TrtBackend",
    "build_profiles",
    "check_engine_manifest",
    "create",
    "engine_cache_key",
    "engine_manifest",
    "find_cached_plan",
    "write_plan",
]

logger = logging.getLogger(__name__)

ENGINE_FORMAT = "dift-fast-trt-engine"
ENGINE_FORMAT_VERSION = 1
ENGINE_SUBDIR = "tensorrt"


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: per input, (min, opt, max) shapes."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def to_dict(self) -> dict[str, list[list[int]]]:
        return {name: [list(s) for s in mmo] for name, mmo in sorted(self.shapes.items())}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    @classmethod
    def current(cls, device: torch.device | None = None) -> GpuInfo:
        props = torch.cuda.get_device_properties(device or torch.cuda.current_device())
        return cls(props.name, (props.major, props.minor))


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu: GpuInfo, profile: Profile) -> str:
    """The key an engine is valid for: an engine is only reusable when all four are the same."""
    return stable_hash({"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu.name,
                        "compute_capability": list(gpu.compute_capability), "profile": profile.to_dict()})


def engine_manifest(graph: str, onnx_sha256: str, trt_version: str, gpu: GpuInfo, profile: Profile,
                    plan_sha256: str | None = None, build_seconds: float | None = None) -> dict[str, Any]:
    return {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "graph": graph,
        "key": engine_cache_key(onnx_sha256, trt_version, gpu, profile),
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": trt_version,
        "gpu": asdict(gpu) | {"compute_capability": list(gpu.compute_capability)},
        "profile": profile.to_dict(),
        "plan_sha256": plan_sha256,
        "build_seconds": build_seconds,
    }


def check_engine_manifest(found: Any, expected: dict[str, Any]) -> list[str]:
    """Why an engine described by ``found`` cannot serve ``expected`` (empty list: it can)."""
    if not isinstance(found, dict) or found.get("format") != ENGINE_FORMAT:
        return ["not a dift-fast TensorRT engine manifest"]
    if found.get("format_version") != ENGINE_FORMAT_VERSION:
        return [f"engine manifest version {found.get('format_version')!r}, expected {ENGINE_FORMAT_VERSION}"]
    reasons = []
    if found.get("onnx_sha256") != expected["onnx_sha256"]:
        reasons.append("the ONNX graph changed since the engine was built")
    if found.get("tensorrt_version") != expected["tensorrt_version"]:
        reasons.append(f"built with TensorRT {found.get('tensorrt_version')}, this is {expected['tensorrt_version']}")
    fg, eg = found.get("gpu") or {}, expected["gpu"]
    if fg.get("name") != eg["name"] or list(fg.get("compute_capability") or []) != eg["compute_capability"]:
        reasons.append(f"built on {fg.get('name')} (sm {fg.get('compute_capability')}), this GPU is {eg['name']} "
                       f"(sm {eg['compute_capability']})")
    if found.get("profile") != expected["profile"]:
        reasons.append(f"built for profile {found.get('profile')}, wanted {expected['profile']}")
    if not reasons and found.get("key") != expected["key"]:
        reasons.append("engine key mismatch")
    return reasons


def _dims(shape: list[int | str], batch: int, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(batch if d == "batch" else int(sizes[d]) if isinstance(d, str) else int(d) for d in shape)


def build_profiles(manifest: dict[str, Any], max_batch: int, opt_batch: int | None = None,
                   latent_range: tuple[int, int, int] | None = None) -> dict[str, Profile]:
    """Profiles for the export's graphs: batch 1..max_batch; for dynamic sizes, latent side (min, opt, max).

    The VAE sees images, the UNet E latents per image; both get the same batch range.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    opt = min(opt_batch or max_batch, max_batch)
    f = manifest["graphs"]["vae_encoder"]["downsample_factor"]
    lo, mid, hi = latent_range or (32, 96, 128)  # 256..1024 px, opt 768 (the presets' size)
    out = {}
    for graph in ("unet", "vae_encoder"):
        shapes = {}
        for spec in manifest["graphs"][graph]["inputs"]:
            if spec["name"] == "timestep":
                shapes[spec["name"]] = ((1,), (1,), (1,))
                continue
            mmo = []
            for b, side in ((1, lo), (opt, mid), (max_batch, hi)):
                sizes = {"height": side, "width": side, "image_height": side * f, "image_width": side * f}
                mmo.append(_dims(spec["shape"], b, sizes))
            shapes[spec["name"]] = tuple(mmo)
        out[graph] = Profile(shapes)
    return out


# -- TensorRT proper (needs the tensorrt package and a GPU) --------------------------------------------------------


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError("the tensorrt backend needs TensorRT 10 or 11: pip install tensorrt (and a CUDA GPU)") \
            from None
    return trt


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64, trt.int32: torch.int32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]


def build_engine(onnx_path: Path, profile: Profile, timing_cache: Path, *, workspace_bytes: int | None = None) -> bytes:
    """Parse ``onnx_path`` (external data beside it) into a strongly typed network and build a serialized plan."""
    trt = _trt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 11:  # TensorRT 11 is always strongly typed (the flag is deprecated and ignored)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def find_cached_plan(folder: Path, graph: str, expected: dict[str, Any]) -> tuple[bytes | None, list[str]]:
    """The cached plan of ``graph`` in ``folder`` if its manifest matches ``expected``; else None and the reasons."""
    plan_path, meta_path = folder / f"{graph}.plan", folder / f"{graph}.plan.json"
    if not plan_path.is_file():
        return None, ["no engine built yet"]
    if not meta_path.is_file():
        return None, ["the plan has no manifest (foreign engine)"]
    try:
        found = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return None, [f"{meta_path.name} is not valid JSON"]
    reasons = check_engine_manifest(found, expected)
    if not reasons and found.get("plan_sha256") != file_sha256(plan_path):
        reasons = ["the plan file does not match its manifest (modified or foreign)"]
    return (None, reasons) if reasons else (plan_path.read_bytes(), [])


def load_or_build(folder: Path, graph: str, onnx_path: Path, onnx_sha256: str, profile: Profile, gpu: GpuInfo, *,
                  no_build: bool = False, workspace_bytes: int | None = None) -> bytes:
    """The plan for ``graph``: the cached one when its manifest matches, else a new build (unless ``no_build``)."""
    trt = _trt()
    expected = engine_manifest(graph, onnx_sha256, trt.__version__, gpu, profile)
    plan, reasons = find_cached_plan(folder, graph, expected)
    if plan is not None:
        return plan
    if no_build:
        raise RuntimeError(f"no usable TensorRT engine for {graph} in {folder}: {'; '.join(reasons)}. Run without "
                           "--no-build (no_build=False) to build one (minutes for SD 2.1)")
    logger.info("building TensorRT engine for %s (%s)", graph, "; ".join(reasons))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = build_engine(onnx_path, profile, folder / "timing.cache", workspace_bytes=workspace_bytes)
    seconds = time.perf_counter() - t0
    write_plan(folder, graph, plan, expected, seconds)
    return plan


def write_plan(folder: Path, graph: str, plan: bytes, expected: dict[str, Any], build_seconds: float) -> None:
    """Store a plan and, after it, its manifest (a plan without a manifest is never trusted)."""
    plan_path = folder / f"{graph}.plan"
    tmp = plan_path.with_suffix(".plan.tmp")
    tmp.write_bytes(plan)
    tmp.replace(plan_path)
    meta = {**expected, "plan_sha256": file_sha256(plan_path), "build_seconds": round(build_seconds, 1)}
    (folder / f"{graph}.plan.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


class _Engine:
    """One deserialized engine and its execution context; runs on torch's current stream."""

    def __init__(self, plan: bytes, cuda_graph: bool) -> None:
        trt = _trt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[Any, dict[str, torch.Tensor]]] = {}

    def _bind(self, tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        for name in self.inputs:
            t = tensors[name]
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        return outs

    def __call__(self, feeds: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        feeds = {n: feeds[n].to(device=device, dtype=self.dtypes[n]).contiguous() for n in self.inputs}
        stream = torch.cuda.current_stream(device)
        if not self.cuda_graph:
            outs = self._bind(feeds, device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return outs
        key = tuple(tuple(t.shape) for t in feeds.values())
        if key not in self._graphs:
            static = {n: t.clone() for n, t in feeds.items()}
            outs = self._bind(static, device)
            self.context.execute_async_v3(stream.cuda_stream)  # flush shape-dependent setup before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream)
            self._graphs[key] = (graph, {**static, **outs})
        graph, buffers = self._graphs[key]
        for n, t in feeds.items():
            buffers[n].copy_(t)
        graph.replay()  # the captured kernels hold this shape's buffers; the context's bindings do not matter
        return {n: buffers[n].clone() for n in self.outputs}


class TrtBackend:
    """Runs the export's two graphs as TensorRT engines on one CUDA device."""

    name = "tensorrt"

    def __init__(self, folder: Path, manifest: dict[str, Any], device: torch.device, *, max_batch: int = 16,
                 opt_batch: int | None = None, latent_range: tuple[int, int, int] | None = None,
                 no_build: bool = False, cuda_graph: bool = False, workspace_gb: float | None = None) -> None:
        if device.type != "cuda":
            raise ValueError(f"the tensorrt backend runs on CUDA devices; device is {device}")
        self.device = device
        self.folder, self.manifest = folder, manifest
        self.dtype = EXPORT_DTYPES[manifest["dtype"]]
        self.geometry = manifest["graphs"]["unet"]["geometry"]
        self.fixed_prompt = manifest["fixed_prompt"] is not None
        gpu = GpuInfo.current(device)
        profiles = build_profiles(manifest, max_batch, opt_batch, latent_range)
        ws = int(workspace_gb * (1 << 30)) if workspace_gb else None
        engines = {}
        with torch.cuda.device(device):
            for graph in ("unet", "vae_encoder"):
                file = manifest["graphs"][graph]["file"]
                plan = load_or_build(folder / ENGINE_SUBDIR, graph, folder / file, manifest["files"][file]["sha256"],
                                     profiles[graph], gpu, no_build=no_build, workspace_bytes=ws)
                engines[graph] = _Engine(plan, cuda_graph)
        self.unet, self.vae = engines["unet"], engines["vae_encoder"]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (moments,) = self.vae({"images": images}, self.device).values()
        mean, logvar = torch.chunk(moments.float(), 2, dim=1)
        return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        feeds = {"x_t": latents, "timestep": torch.tensor([int(timestep)], dtype=torch.int64, device=self.device)}
        if not self.fixed_prompt:
            feeds["encoder_hidden_states"] = context
        (feats,) = self.unet(feeds, self.device).values()
        expected = feature_hw(self.geometry, *latents.shape[-2:])
        if tuple(feats.shape[-2:]) != expected:
            raise RuntimeError(f"engine returned {tuple(feats.shape)}, expected spatial size {expected}")
        return feats


def create(components: Any, device: torch.device, dtype: torch.dtype, *, engine_dir: str | os.PathLike | None = None,
           no_build: bool = False, max_batch: int = 16, opt_batch: int | None = None,
           latent_range: tuple[int, int, int] | None = None, cuda_graph: bool = False,
           workspace_gb: float | None = None, check_weights: bool = True) -> TrtBackend:
    """Entry point (``dift_fast.backends``): a :class:`TrtBackend` for loaded components.

    Args:
        engine_dir: an export folder; engines go to ``engine_dir/tensorrt/``. Exported there when empty.
        no_build: raise when the export or an engine is missing or stale instead of building it.
        max_batch: largest batch (UNet rows = images x E) the profile admits; opt_batch: the one tuned for.
        latent_range: (min, opt, max) latent side for dynamic-size exports (default 32, 96, 128).
        cuda_graph: replay each input shape from a captured CUDA graph.
        workspace_gb: TensorRT builder workspace limit.
    """
    _trt()
    if not torch.cuda.is_available():
        raise RuntimeError("the tensorrt backend needs a CUDA GPU; none is visible")
    folder, manifest = resolve_export(components, dtype, engine_dir, no_build=no_build, check_weights=check_weights)
    return TrtBackend(folder, manifest, torch.device(device), max_batch=max_batch, opt_batch=opt_batch,
                      latent_range=latent_range, no_build=no_build, cuda_graph=cuda_graph, workspace_gb=workspace_gb)
