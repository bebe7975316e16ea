"""Which TensorRT engine may be reused: cache keys, engine manifests, optimisation profiles, and plan files.

Engines live in ``<export>/tensorrt/`` as ``<graph>.plan`` with ``<graph>.plan.json``, keyed by (ONNX hash,
TensorRT version, GPU name and compute capability, profile); a plan whose manifest does not match is rebuilt (or
refused under ``no_build``). Nothing here needs TensorRT: :func:`.trt_backend.load_or_build` applies the policy and
builds (:mod:`.trt_builder`) when no cached plan fits.

Profiles are sized from what the extractor runs: ``max_images`` images per VAE call and ``max_images × E`` rows per
UNet call (E the ensemble size), at the configured image size for dynamic-size exports. A larger micro-batch is run
in chunks of at most the profile's rows (:func:`row_chunks`), so no batch size can overflow an engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dift_fast.atomic import write_atomic

from .manifest import file_sha256, stable_hash

__all__ = [
    "ENGINE_FORMAT",
    "ENGINE_SUBDIR",
    "GpuInfo",
    "Profile",
    "build_profiles",
    "check_engine_manifest",
    "downsample_factor",
    "engine_cache_key",
    "engine_manifest",
    "find_cached_plan",
    "row_chunks",
    "write_plan",
]

ENGINE_FORMAT = "dift-fast-trt-engine"
ENGINE_FORMAT_VERSION = 1
ENGINE_SUBDIR = "tensorrt"


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: per input, (min, opt, max) shapes."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def to_dict(self) -> dict[str, list[list[int]]]:
        return {name: [list(s) for s in mmo] for name, mmo in sorted(self.shapes.items())}

    def max_rows(self, name: str) -> int:
        """The largest first dimension (batch rows) the profile admits for input ``name``."""
        return int(self.shapes[name][2][0])


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


DEFAULT_PIXEL_RANGE = (256, 768, 1024)  # image side (min, opt, max) of dynamic exports; opt: the presets' size


def downsample_factor(manifest: dict[str, Any]) -> int:
    """Image pixels per latent cell: the encoder graph's factor, 1 for a pixel-space export (no encoder graph)."""
    graphs = manifest["graphs"]
    return int(graphs["vae_encoder"]["downsample_factor"]) if "vae_encoder" in graphs else 1


def _dims(shape: list[int | str], batch: int, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(batch if d == "batch" else int(sizes[d]) if isinstance(d, str) else int(d) for d in shape)


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def build_profiles(manifest: dict[str, Any], max_images: int, ensemble_size: int = 1, opt_images: int | None = None,
                   latent_range: tuple[int, int, int] | None = None,
                   latent_hw: tuple[int, int] | None = None) -> dict[str, Profile]:
    """Profiles for the export's graphs: rows 1..max_images (VAE) and 1..max_images·E (UNet).

    Args:
        max_images: images per engine call (the extractor's batch size).
        ensemble_size: E, UNet rows per image.
        opt_images: the batch the engines are tuned for (default ``max_images``).
        latent_range: dynamic-size exports: (min, opt, max) latent side, both axes.
        latent_hw: dynamic-size exports without ``latent_range``: the one latent (h, w) the extractor runs (its
            configured image size); neither: :data:`DEFAULT_PIXEL_RANGE` in latent cells. Static exports keep their
            sizes. An export without an encoder graph (pixel space) gets a UNet profile only.
    """
    _positive("max_images (max_batch)", max_images)
    _positive("ensemble_size", ensemble_size)
    opt = min(_positive("opt_images (opt_batch)", opt_images), max_images) if opt_images is not None else max_images
    f = downsample_factor(manifest)
    if latent_range is not None:
        sides = [(int(v), int(v)) for v in latent_range]
    elif latent_hw is not None:
        sides = [(int(latent_hw[0]), int(latent_hw[1]))] * 3
    else:
        sides = [(px // f, px // f) for px in DEFAULT_PIXEL_RANGE]
    rows = {"unet": ensemble_size, "vae_encoder": 1}
    out = {}
    for graph in [g for g in ("unet", "vae_encoder") if g in manifest["graphs"]]:
        shapes = {}
        for spec in manifest["graphs"][graph]["inputs"]:
            if spec["name"] == "timestep":
                shapes[spec["name"]] = ((1,), (1,), (1,))
                continue
            mmo = []
            for batch, (h, w) in zip((1, opt * rows[graph], max_images * rows[graph]), sides):  # min: one row
                sizes = {"height": h, "width": w, "image_height": h * f, "image_width": w * f}
                mmo.append(_dims(spec["shape"], batch, sizes))
            shapes[spec["name"]] = tuple(mmo)
        out[graph] = Profile(shapes)
    return out


def row_chunks(n: int, max_rows: int) -> list[slice]:
    """Row slices of at most ``max_rows`` covering ``0..n``: full chunks, then the remainder (two shapes at most)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    return [slice(start, min(start + max_rows, n)) for start in range(0, n, max_rows)]


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


def write_plan(folder: Path, graph: str, plan: bytes, expected: dict[str, Any], build_seconds: float) -> None:
    """Store a plan and, after it, its manifest (a plan without a manifest is never trusted)."""
    plan_path = write_atomic(folder / f"{graph}.plan", plan)
    meta = {**expected, "plan_sha256": file_sha256(plan_path), "build_seconds": round(build_seconds, 1)}
    write_atomic(folder / f"{graph}.plan.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
