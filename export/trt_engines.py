"""Which TensorRT engine may be reused: cache keys, engine manifests, optimisation profiles, and plan files.

Engines live in ``<export>/tensorrt/`` as ``<graph>.plan`` with ``<graph>.plan.json``, keyed by (ONNX hash,
TensorRT version, GPU name and compute capability, profile); a plan whose manifest does not match is rebuilt (or
refused under ``no_build``). Nothing here needs TensorRT: :func:`.trt_backend.load_or_build` applies the policy and
builds (:mod:`.trt_builder`) when no cached plan fits.
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
    "engine_cache_key",
    "engine_manifest",
    "find_cached_plan",
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
    graphs = manifest["graphs"]
    f = graphs["vae_encoder"]["downsample_factor"] if "vae_encoder" in graphs else 1  # 1: pixel space (ADM)
    lo, mid, hi = latent_range or tuple(px // f for px in (256, 768, 1024))  # 256..1024 px, opt 768 (the presets')
    out = {}
    for graph in [g for g in ("unet", "vae_encoder") if g in graphs]:
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
