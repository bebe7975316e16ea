"""The ``onnxruntime`` backend: runs an export folder's graphs with onnxruntime.

CPU execution provider everywhere; with onnxruntime-gpu, the CUDA EP (optionally with a CUDA graph) or the
TensorRT EP (fp16, engine cache, CUDA graph). The extractor keeps noise, prompts and the ensemble reduction, so
this backend only maps torch tensors in and out of the two graphs.

On CUDA the graphs run through I/O binding on torch tensors, on a CUDA stream handed to onnxruntime
(``user_compute_stream``), with ``disable_synchronize_execution_providers`` so a run returns without waiting for
the GPU; work on torch's current stream is ordered before and after each run by stream waits on the device, not by
the host. With ``cuda_graph``, onnxruntime captures on a dedicated stream (capture cannot use the legacy default
stream) and its replay synchronises that stream itself (``CUDAGraphManager::Replay``): one host wait per run that
this backend cannot remove. onnxruntime runs no bf16 graph (no bfloat16 Conv in its CPU and CUDA providers), and
that is refused before anything is exported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dift_fast.backend_options import OrtOptions, backend_options_for
from dift_fast.unet import posterior

from .manifest import MANIFEST_NAME, load_manifest, manifest_geometry
from .precision import EXPORT_DTYPES, dtype_name
from .resolve import backend_export
from .run_checks import FixedPrompt, check_image_size

__all__ = ["OrtBackend", "create"]

logger = logging.getLogger(__name__)

_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
NO_BF16 = ("onnxruntime cannot run bf16 graphs (its CPU and CUDA providers have no bfloat16 Conv); bf16 is the "
           "default dtype on CUDA: pass dtype='fp16' or 'fp32' (--dtype fp16), or use backend='tensorrt' for bf16")


def _session_options(intra_op_threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
    opts.log_severity_level = 3  # errors only: the CPU EP's cast-insertion notes for fp16 graphs are expected
    return opts


def execution_providers(device: torch.device, provider: str | None, *, cache_dir: Path, fp16: bool,
                        cuda_graph: bool, stream: Any = None) -> list[Any]:
    """onnxruntime provider list for ``device``: "cpu", "cuda" or "tensorrt" (default: cpu, or cuda on CUDA).

    ``stream`` (a ``torch.cuda.Stream`` on ``device``) is the stream onnxruntime runs on.
    """
    import onnxruntime as ort

    provider = provider or ("cuda" if device.type == "cuda" else "cpu")
    available = ort.get_available_providers()
    if provider == "cpu":
        if device.type != "cpu":
            raise ValueError(f"provider 'cpu' runs on the CPU; device is {device}")
        if cuda_graph:
            raise ValueError("cuda_graph needs the cuda or tensorrt provider, not cpu")
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise ValueError(f"provider {provider!r} needs device='cuda'; device is {device}")
    needed = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(provider)
    if needed is None:
        raise ValueError(f"provider {provider!r}: choose cpu, cuda or tensorrt")
    if needed not in available:
        raise RuntimeError(f"onnxruntime here has {available}, not {needed}: install onnxruntime-gpu "
                           "(pip install onnxruntime-gpu) matching your CUDA version")
    index = device.index if device.index is not None else torch.cuda.current_device()
    cuda_opts: dict[str, Any] = {"device_id": index}
    if stream is not None:
        cuda_opts["user_compute_stream"] = str(stream.cuda_stream)
    if cuda_graph:
        cuda_opts["enable_cuda_graph"] = "1"
    out: list[Any] = []
    if provider == "tensorrt":
        cache_dir.mkdir(parents=True, exist_ok=True)
        trt_opts: dict[str, Any] = {
            "device_id": index,
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            "trt_cuda_graph_enable": bool(cuda_graph),
        }
        if stream is not None:
            trt_opts["user_compute_stream"] = str(stream.cuda_stream)
        out.append((needed, trt_opts))
    out.append(("CUDAExecutionProvider", cuda_opts))
    return out


class OrtBackend:
    """Runs ``unet.onnx`` and ``vae_encoder.onnx`` of an export folder with onnxruntime."""

    name = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, device: torch.device, *, manifest: dict[str, Any] | None = None,
                 provider: str | None = None, intra_op_threads: int | None = None, fp16: bool = False,
                 cuda_graph: bool = False, engine_cache_dir: str | os.PathLike | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else load_manifest(self.folder)
        self.device = torch.device(device)
        self.dtype = EXPORT_DTYPES[self.manifest["dtype"]]
        if self.dtype == torch.bfloat16:
            raise ValueError(f"export {self.folder} holds bf16 graphs: {NO_BF16}")
        if cuda_graph and self.manifest["dynamic_size"]:
            raise ValueError(f"cuda_graph needs a static-size export; {self.folder} is dynamic-size: export one with "
                             "`dift-fast export --out DIR --image-size WxH` (without --dynamic-size)")
        self.cuda_graph = cuda_graph
        self._stream = None
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            # Capture needs a stream other than the legacy default; without a graph, torch's current stream.
            self._stream = torch.cuda.Stream(self.device) if cuda_graph else torch.cuda.current_stream(self.device)
        providers = execution_providers(self.device, provider, fp16=fp16, cuda_graph=cuda_graph, stream=self._stream,
                                        cache_dir=Path(engine_cache_dir or self.folder / "ort_trt_cache"))
        opts = _session_options(intra_op_threads)
        graphs = self.manifest["graphs"]
        self.unet = ort.InferenceSession(str(self.folder / graphs["unet"]["file"]), opts, providers=providers)
        self.vae = (ort.InferenceSession(str(self.folder / graphs["vae_encoder"]["file"]), opts, providers=providers)
                    if "vae_encoder" in graphs else None)  # a pixel-space backbone has no encoder graph
        self.geometry = manifest_geometry(self.manifest)
        self.fixed_prompt = FixedPrompt.of_export(self.folder, self.manifest)
        self._buffers: dict[tuple[str, tuple[int, ...]], tuple[int, dict[str, torch.Tensor], Any]] = {}
        self._timesteps: dict[int, torch.Tensor] = {}

    @property
    def provider(self) -> str:
        return self.unet.get_providers()[0]

    # -- Backend protocol ---------------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vae is None:
            raise RuntimeError(f"export {self.folder} has no encoder graph: its backbone runs in pixel space")
        n, _, H, W = images.shape
        (moments,) = self._run(self.vae, "vae", {"images": images.to(self.dtype)},
                               {"moments": (n, 2 * self.geometry.latent_channels, *self.geometry.latent_hw(H, W))})
        return posterior(moments.float())

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = latents.shape
        feeds = {"x_t": latents.to(self.dtype), "timestep": self._timestep(timestep)}
        check = None
        if self.fixed_prompt is not None:
            check = self.fixed_prompt.check(context)
        elif context is not None:  # None: an unconditional backbone's graph takes no text
            feeds["encoder_hidden_states"] = context.to(self.dtype)
        fh, fw = self.geometry.feature_hw(h, w)
        (feats,) = self._run(self.unet, "unet", feeds, {"features": (n, self.geometry.feature_channels, fh, fw)})
        if check is not None:
            check.raise_if_other()  # read after the UNet is queued
        return feats

    # -- running ------------------------------------------------------------------------------------------------

    def _timestep(self, t: int) -> torch.Tensor:
        """A timestep tensor on the run's device, made once (not copied from pageable memory per call)."""
        tensor = self._timesteps.get(int(t))
        if tensor is None:
            tensor = self._timesteps[int(t)] = torch.tensor([int(t)], dtype=torch.int64, device=self.device)
        return tensor

    def _run(self, session: Any, key: str, feeds: dict[str, torch.Tensor],
             out_shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
        if self.device.type == "cpu":
            arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in feeds.items()}
            return [torch.from_numpy(o) for o in session.run(list(out_shapes), arrays)]
        with torch.cuda.device(self.device):
            return self._run_cuda(session, key, feeds, out_shapes)

    def _run_cuda(self, session: Any, key: str, feeds: dict[str, torch.Tensor],
                  out_shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
        """I/O binding on torch CUDA tensors; with ``cuda_graph`` one captured graph per input shape."""
        import onnxruntime as ort

        index = self.device.index
        current = torch.cuda.current_stream(self.device)
        shape_key = (key, *(tuple(v.shape) for v in feeds.values()))
        entry = self._buffers.get(shape_key) if self.cuda_graph else None
        if entry is None:
            buffers = {k: torch.empty(v.shape, dtype=v.dtype, device=self.device) for k, v in feeds.items()}
            buffers.update({k: torch.empty(s, dtype=self.dtype, device=self.device) for k, s in out_shapes.items()})
            binding = session.io_binding()
            for name, t in buffers.items():
                bind = binding.bind_input if name in feeds else binding.bind_output
                bind(name, "cuda", index, _NP_DTYPES[t.dtype], list(t.shape), t.data_ptr())
            entry = (len(self._buffers) + 1, buffers, binding)
            if self.cuda_graph:
                self._buffers[shape_key] = entry
        graph_id, buffers, binding = entry
        for k, v in feeds.items():
            buffers[k].copy_(v, non_blocking=True)  # on `current`; a host tensor is staged without a stream wait
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        if self._stream != current:
            self._stream.wait_stream(current)  # inputs written on `current` before onnxruntime reads them
        session.run_with_iobinding(binding, run_options)
        if self._stream != current:
            current.wait_stream(self._stream)  # outputs read on `current` after onnxruntime wrote them
        outs = [buffers[k] for k in out_shapes]
        return [o.clone() for o in outs] if self.cuda_graph else outs


def _export_dtype(opts: OrtOptions, dtype: torch.dtype) -> str | None:
    """The dtype of the graphs the backend will run: an existing export's, else the one a new export gets."""
    if opts.export_dir is not None and (Path(opts.export_dir) / MANIFEST_NAME).is_file():
        return load_manifest(opts.export_dir)["dtype"]
    return dtype_name(dtype)


def create(components: Any, device: torch.device, dtype: torch.dtype, options: OrtOptions | dict[str, Any] | None = None,
           *, config: Any = None, **kwargs: Any) -> OrtBackend:
    """Entry point (``dift_fast.backends``): an :class:`OrtBackend` for ``components`` on ``device``.

    ``options`` is an :class:`~dift_fast.backend_options.OrtOptions`, a dict of its fields, or its fields as
    keywords (``create(components, device, dtype, export_dir="exports/spair")``). ``dtype`` is that of a new export;
    an existing export's dtype wins. The UNet and VAE weights are read only to export or to check an export once.
    ``config`` (the extractor's :class:`~dift_fast.DiftConfig`): a static export of another image size is refused.
    bf16 is refused here, before anything is exported.
    """
    opts = backend_options_for("onnxruntime", options, **kwargs)
    if _export_dtype(opts, dtype) == "bf16":
        where = f"export {opts.export_dir} holds bf16 graphs" if opts.export_dir and \
            (Path(opts.export_dir) / MANIFEST_NAME).is_file() else "the requested dtype is bf16"
        raise ValueError(f"{where}: {NO_BF16}")
    opts, folder, manifest = backend_export("onnxruntime", components, dtype, opts)
    check_image_size(manifest, getattr(config, "image_size", None), folder)
    return OrtBackend(folder, device, manifest=manifest, provider=opts.provider, intra_op_threads=opts.intra_op_threads,
                      fp16=opts.fp16, cuda_graph=opts.cuda_graph, engine_cache_dir=opts.engine_cache_dir)
