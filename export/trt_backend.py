"""The ``tensorrt`` backend: TensorRT engines built from an export folder's ONNX graphs, one CUDA device.

Each graph gets one optimisation profile: batch 1..max_batch (and a spatial range for dynamic-size exports). Which
engine may be reused is decided in :mod:`.trt_engines`, engines are built in :mod:`.trt_builder` and run in
:mod:`.trt_runtime`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from dift_fast.backend_options import TrtOptions
from dift_fast.unet import posterior

from .manifest import manifest_geometry
from .precision import EXPORT_DTYPES
from .resolve import backend_export
from .trt_builder import build_engine
from .trt_engines import ENGINE_SUBDIR, GpuInfo, Profile, build_profiles, engine_manifest, find_cached_plan, write_plan
from .trt_runtime import TrtEngine, import_tensorrt

__all__ = ["TrtBackend", "create", "load_or_build"]

logger = logging.getLogger(__name__)


def load_or_build(folder: Path, graph: str, onnx_path: Path, onnx_sha256: str, profile: Profile, gpu: GpuInfo, *,
                  no_build: bool = False, workspace_bytes: int | None = None) -> bytes:
    """The plan for ``graph``: the cached one when its manifest matches, else a new build (unless ``no_build``)."""
    expected = engine_manifest(graph, onnx_sha256, import_tensorrt().__version__, gpu, profile)
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
        self.geometry = manifest_geometry(manifest)
        self.fixed_prompt = manifest["fixed_prompt"] is not None
        gpu = GpuInfo.current(device)
        profiles = build_profiles(manifest, max_batch, opt_batch, latent_range)
        ws = int(workspace_gb * (1 << 30)) if workspace_gb else None
        engines = {}
        with torch.cuda.device(device):
            for graph in [g for g in ("unet", "vae_encoder") if g in manifest["graphs"]]:  # no encoder: pixel space
                file = manifest["graphs"][graph]["file"]
                plan = load_or_build(folder / ENGINE_SUBDIR, graph, folder / file, manifest["files"][file]["sha256"],
                                     profiles[graph], gpu, no_build=no_build, workspace_bytes=ws)
                engines[graph] = TrtEngine(plan, cuda_graph)
        self.unet, self.vae = engines["unet"], engines.get("vae_encoder")

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vae is None:
            raise RuntimeError(f"export {self.folder} has no encoder graph: its backbone runs in pixel space")
        (moments,) = self.vae({"images": images}, self.device).values()
        return posterior(moments.float())

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor | None) -> torch.Tensor:
        feeds = {"x_t": latents, "timestep": torch.tensor([int(timestep)], dtype=torch.int64, device=self.device)}
        if not self.fixed_prompt and context is not None:  # None: an unconditional backbone's graph takes no text
            feeds["encoder_hidden_states"] = context
        (feats,) = self.unet(feeds, self.device).values()
        expected = self.geometry.feature_hw(*latents.shape[-2:])
        if tuple(feats.shape[-2:]) != expected:
            raise RuntimeError(f"engine returned {tuple(feats.shape)}, expected spatial size {expected}")
        return feats


def create(components: Any, device: torch.device, dtype: torch.dtype, options: TrtOptions | dict[str, Any] | None = None,
           **kwargs: Any) -> TrtBackend:
    """Entry point (``dift_fast.backends``): a :class:`TrtBackend` for ``components`` on the CUDA ``device``.

    ``options`` is a :class:`~dift_fast.backend_options.TrtOptions`, a dict of its fields, or its fields as
    keywords (``max_batch=8``); as for :func:`dift_fast.export.ort_backend.create`, weights are read only to export
    or to check an export once.
    """
    import_tensorrt()
    if not torch.cuda.is_available():
        raise RuntimeError("the tensorrt backend needs a CUDA GPU; none is visible")
    opts, folder, manifest = backend_export("tensorrt", components, dtype, options, **kwargs)
    return TrtBackend(folder, manifest, torch.device(device), max_batch=opts.max_batch, opt_batch=opts.opt_batch,
                      latent_range=opts.latent_range, no_build=opts.no_build, cuda_graph=opts.cuda_graph,
                      workspace_gb=opts.workspace_gb)
