"""The ``tensorrt`` backend: TensorRT engines built from an export folder's ONNX graphs, one CUDA device.

Each graph gets one optimisation profile sized from what the extractor runs: ``max_batch`` images per VAE call and
``max_batch × E`` rows per UNet call (``max_batch`` defaults to the extractor's batch size), at the configured image
size for dynamic-size exports. A larger micro-batch (the feature store's batch grows with free memory) runs in chunks
of at most the profile's rows. Which engine may be reused is decided in :mod:`.trt_engines`, engines are built in
:mod:`.trt_builder` and run in :mod:`.trt_runtime`. Every engine call runs under ``torch.cuda.device(device)`` on
that device's current stream.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dift_fast.backend_options import TrtOptions
from dift_fast.unet import posterior

from .attention import ATTENTION_FORM
from .manifest import manifest_geometry
from .precision import EXPORT_DTYPES
from .resolve import backend_export
from .run_checks import FixedPrompt, check_image_size
from .trt_builder import build_engine
from .trt_engines import (
    ENGINE_SUBDIR,
    GpuInfo,
    Profile,
    build_profiles,
    downsample_factor,
    engine_manifest,
    find_cached_plan,
    row_chunks,
    write_plan,
)
from .trt_runtime import TrtEngine, import_tensorrt

__all__ = ["TrtBackend", "create", "load_or_build", "load_trt_backend", "profiles_for", "run_in_chunks"]

logger = logging.getLogger(__name__)

Engine = Callable[[dict[str, torch.Tensor], torch.device], dict[str, torch.Tensor]]


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


def run_in_chunks(fn: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], max_rows: int) -> torch.Tensor:
    """``fn(*tensors)`` on row chunks of at most ``max_rows`` (one call when they fit), concatenated on rows."""
    n = tensors[0].shape[0]
    if n <= max_rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[s] for t in tensors)) for s in row_chunks(n, max_rows)])


class TrtBackend:
    """Runs the export's two graphs as TensorRT engines on one CUDA device.

    Args:
        manifest: the export's manifest.
        device: the engines' device (an indexed CUDA device; the guard of every call).
        unet, vae: the engines (``feeds, device -> outputs``, e.g. :class:`.trt_runtime.TrtEngine`); ``vae`` is
            None for a pixel-space export (no encoder graph).
        profiles: the profiles the engines were built for (their row limits size the chunks).
        fixed_prompt: the prompt a fixed-prompt export folds in (other prompts are refused), or None.
    """

    name = "tensorrt"

    def __init__(self, manifest: dict[str, Any], device: torch.device, unet: Engine, vae: Engine | None,
                 profiles: dict[str, Profile], fixed_prompt: FixedPrompt | None = None) -> None:
        self.device, self.manifest = device, manifest
        self.dtype = EXPORT_DTYPES[manifest["dtype"]]
        self.geometry = manifest_geometry(manifest)
        self.unet, self.vae = unet, vae
        self.fixed_prompt = fixed_prompt
        self.max_rows = {"unet": profiles["unet"].max_rows("x_t")}
        if vae is not None:
            self.max_rows["vae"] = profiles["vae_encoder"].max_rows("images")
        self._timesteps: dict[int, torch.Tensor] = {}

    def _guard(self) -> Any:
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _timestep(self, t: int) -> torch.Tensor:
        """A device tensor per timestep, made once: building it per call would copy from pageable host memory."""
        tensor = self._timesteps.get(int(t))
        if tensor is None:
            tensor = self._timesteps[int(t)] = torch.tensor([int(t)], dtype=torch.int64, device=self.device)
        return tensor

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vae is None:
            raise RuntimeError("this export has no encoder graph: its backbone runs in pixel space")
        with self._guard():
            moments = run_in_chunks(lambda x: self.vae({"images": x}, self.device)["moments"], (images,),
                                    self.max_rows["vae"])
            return posterior(moments.float())

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor | None) -> torch.Tensor:
        with self._guard():
            t = self._timestep(timestep)
            check = None
            if self.fixed_prompt is not None:
                check = self.fixed_prompt.check(context)
            # the graph's text input: none with a folded prompt, or for an unconditional backbone (context None)
            text = context if self.fixed_prompt is None and context is not None else None

            def run(x: torch.Tensor, *c: torch.Tensor) -> torch.Tensor:
                feeds = {"x_t": x, "timestep": t}
                if c:
                    feeds["encoder_hidden_states"] = c[0]
                return self.unet(feeds, self.device)["features"]

            feats = run_in_chunks(run, (latents,) if text is None else (latents, text), self.max_rows["unet"])
            if check is not None:
                check.raise_if_other()  # read after the UNet is queued: the GPU keeps working meanwhile
        expected = self.geometry.feature_hw(*latents.shape[-2:])
        if tuple(feats.shape[-2:]) != expected:
            raise RuntimeError(f"engine returned {tuple(feats.shape)}, expected spatial size {expected}")
        return feats


def _config_geometry(config: Any, manifest: dict[str, Any]) -> tuple[int, int, tuple[int, int] | None]:
    """(batch size, ensemble size, latent (h, w) or None) of the extractor's config; DiftConfig's defaults without."""
    from dift_fast.config import AUTO_BATCH, DiftConfig

    if config is None:
        config = DiftConfig()  # E = 8, 768x768, batch "auto" (1 here): what an extractor with no overrides runs
        logger.info("no extractor config given: TensorRT profiles assume batch 1, E = %d, %s",
                    config.ensemble_size, config.image_size)
    f = downsample_factor(manifest)
    size = config.image_size
    latent = (int(size[1]) // f, int(size[0]) // f) if size is not None else None
    # batch_size "auto" is 1 on the accelerated backends (DiftExtractor resolves it so before building the backend)
    batch = 1 if config.batch_size == AUTO_BATCH else int(config.batch_size)
    return batch, int(config.ensemble_size), latent


def profiles_for(manifest: dict[str, Any], opts: TrtOptions, config: Any = None) -> dict[str, Profile]:
    """The engines' profiles: ``opts.max_batch`` (default: the config's batch size) images, ``× E`` UNet rows, at
    ``opts.latent_range`` or the config's image size for a dynamic-size export."""
    batch, ensemble, latent_hw = _config_geometry(config, manifest)
    return build_profiles(manifest, opts.max_batch or batch, ensemble, opts.opt_batch, opts.latent_range, latent_hw)


def load_trt_backend(folder: Path, manifest: dict[str, Any], device: torch.device, opts: TrtOptions,
                     config: Any = None) -> TrtBackend:
    """Load (or build) the export's engines for ``device`` with profiles sized from ``opts`` and ``config``."""
    if device.type != "cuda":
        raise ValueError(f"the tensorrt backend runs on CUDA devices; device is {device}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    check_image_size(manifest, getattr(config, "image_size", None), folder)
    if manifest.get("attention") != ATTENTION_FORM and manifest["dtype"] != "fp32":
        logger.warning("export %s predates the fusable attention form: TensorRT will not fuse its attention and "
                       "materialises every score tensor; export it again (dift-fast export --force)", folder)
    profiles = profiles_for(manifest, opts, config)
    ws = int(opts.workspace_gb * (1 << 30)) if opts.workspace_gb else None
    engines = {}
    with torch.cuda.device(device):
        gpu = GpuInfo.current(device)
        for graph in profiles:  # no encoder graph: a pixel-space backbone
            file = manifest["graphs"][graph]["file"]
            plan = load_or_build(folder / ENGINE_SUBDIR, graph, folder / file, manifest["files"][file]["sha256"],
                                 profiles[graph], gpu, no_build=opts.no_build, workspace_bytes=ws)
            engines[graph] = TrtEngine(plan, opts.cuda_graph, name=graph)
    return TrtBackend(manifest, device, engines["unet"], engines.get("vae_encoder"), profiles,
                      FixedPrompt.of_export(folder, manifest))


def create(components: Any, device: torch.device, dtype: torch.dtype, options: TrtOptions | dict[str, Any] | None = None,
           *, config: Any = None, **kwargs: Any) -> TrtBackend:
    """Entry point (``dift_fast.backends``): a :class:`TrtBackend` for ``components`` on the CUDA ``device``.

    ``options`` is a :class:`~dift_fast.backend_options.TrtOptions`, a dict of its fields, or its fields as
    keywords (``max_batch=8``); ``config`` (the extractor's :class:`~dift_fast.DiftConfig`) sizes the engine
    profiles: its batch size, ensemble size and image size. As for :func:`dift_fast.export.ort_backend.create`,
    weights are read only to export or to check an export once.
    """
    import_tensorrt()
    if not torch.cuda.is_available():
        raise RuntimeError("the tensorrt backend needs a CUDA GPU; none is visible")
    opts, folder, manifest = backend_export("tensorrt", components, dtype, options, **kwargs)
    return load_trt_backend(folder, manifest, torch.device(device), opts, config)
