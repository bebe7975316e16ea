"""The ``onnxruntime`` backend: runs an export folder's graphs with onnxruntime.

CPU execution provider everywhere; with onnxruntime-gpu, the CUDA EP (optionally with a CUDA graph) or the
TensorRT EP (fp16, engine cache, CUDA graph). The extractor keeps noise, prompts and the ensemble reduction, so
this backend only maps torch tensors in and out of the two graphs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dift_fast.backend_options import OrtOptions
from dift_fast.unet import posterior

from .manifest import load_manifest, manifest_geometry
from .precision import EXPORT_DTYPES
from .resolve import backend_export

__all__ = ["OrtBackend", "create"]

logger = logging.getLogger(__name__)

_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


def _session_options(intra_op_threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
    opts.log_severity_level = 3  # errors only: the CPU EP's cast-insertion notes for fp16 graphs are expected
    return opts


def execution_providers(device: torch.device, provider: str | None, *, cache_dir: Path, fp16: bool,
                        cuda_graph: bool) -> list[Any]:
    """onnxruntime provider list for ``device``: "cpu", "cuda" or "tensorrt" (default: cpu, or cuda on CUDA)."""
    import onnxruntime as ort

    provider = provider or ("cuda" if device.type == "cuda" else "cpu")
    available = ort.get_available_providers()
    if provider == "cpu":
        if device.type != "cpu":
            raise ValueError(f"provider 'cpu' runs on the CPU; device is {device}")
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
    if cuda_graph:
        cuda_opts["enable_cuda_graph"] = "1"
    else:  # share torch's stream so inputs written by torch are visible without a device-wide sync
        cuda_opts["user_compute_stream"] = str(torch.cuda.current_stream(index).cuda_stream)
    out: list[Any] = []
    if provider == "tensorrt":
        cache_dir.mkdir(parents=True, exist_ok=True)
        out.append((needed, {
            "device_id": index,
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            "trt_cuda_graph_enable": bool(cuda_graph),
        }))
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
            raise ValueError("onnxruntime cannot run bf16 graphs here (no bf16 Conv in its CPU and CUDA EPs); "
                             "use the tensorrt backend for bf16, or export fp16/fp32")
        self.cuda_graph = cuda_graph
        providers = execution_providers(self.device, provider, fp16=fp16, cuda_graph=cuda_graph,
                                        cache_dir=Path(engine_cache_dir or self.folder / "ort_trt_cache"))
        opts = _session_options(intra_op_threads)
        graphs = self.manifest["graphs"]
        self.unet = ort.InferenceSession(str(self.folder / graphs["unet"]["file"]), opts, providers=providers)
        self.vae = (ort.InferenceSession(str(self.folder / graphs["vae_encoder"]["file"]), opts, providers=providers)
                    if "vae_encoder" in graphs else None)  # a pixel-space backbone (ADM) has no encoder graph
        self.geometry = manifest_geometry(self.manifest)
        self.fixed_context: torch.Tensor | None = None
        if self.manifest["fixed_prompt"] is not None:
            self.fixed_context = torch.from_numpy(np.load(self.folder / "prompt_embedding.npy"))[0]  # [77, D]
        self._buffers: dict[tuple[str, tuple[int, ...]], tuple[int, dict[str, torch.Tensor], Any]] = {}

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
        feeds = {"x_t": latents.to(self.dtype), "timestep": torch.tensor([int(timestep)], dtype=torch.int64)}
        if self.fixed_context is not None:
            self._check_prompt(context)
        elif context is not None:  # None: an unconditional backbone's graph takes no text
            feeds["encoder_hidden_states"] = context.to(self.dtype)
        fh, fw = self.geometry.feature_hw(h, w)
        (feats,) = self._run(self.unet, "unet", feeds, {"features": (n, self.geometry.feature_channels, fh, fw)})
        return feats

    # -- running ------------------------------------------------------------------------------------------------

    def _check_prompt(self, context: torch.Tensor) -> None:
        """A fixed-prompt graph ignores ``context``; refuse rather than silently use another prompt."""
        ref = self.fixed_context.to(context.device)
        diff = (context.float() - ref).flatten(1).norm(dim=1) / ref.norm().clamp_min(1e-12)
        if bool((diff > 1e-3).any()):
            raise ValueError(f"export {self.folder} folds the prompt {self.manifest['fixed_prompt']['text']!r} into "
                             "its graph; this extraction uses another prompt. Export without --fixed-prompt, or "
                             "extract with that prompt")

    def _run(self, session: Any, key: str, feeds: dict[str, torch.Tensor],
             out_shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
        if self.device.type == "cpu":
            arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in feeds.items()}
            return [torch.from_numpy(o) for o in session.run(list(out_shapes), arrays)]
        return self._run_cuda(session, key, feeds, out_shapes)

    def _run_cuda(self, session: Any, key: str, feeds: dict[str, torch.Tensor],
                  out_shapes: dict[str, tuple[int, ...]]) -> list[torch.Tensor]:
        """I/O binding on torch CUDA tensors; with ``cuda_graph`` one captured graph per input shape."""
        import onnxruntime as ort

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
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
            buffers[k].copy_(v)
        run_options = ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
            torch.cuda.current_stream(index).synchronize()  # ORT's graph replays on its own stream
        session.run_with_iobinding(binding, run_options)
        outs = [buffers[k] for k in out_shapes]
        return [o.clone() for o in outs] if self.cuda_graph else outs


def create(components: Any, device: torch.device, dtype: torch.dtype, options: OrtOptions | dict[str, Any] | None = None,
           **kwargs: Any) -> OrtBackend:
    """Entry point (``dift_fast.backends``): an :class:`OrtBackend` for ``components`` on ``device``.

    ``options`` is an :class:`~dift_fast.backend_options.OrtOptions`, a dict of its fields, or its fields as
    keywords (``create(components, device, dtype, export_dir="exports/spair")``). ``dtype`` is that of a new export;
    an existing export's dtype wins. The UNet and VAE weights are read only to export or to check an export once.
    """
    opts, folder, manifest = backend_export("onnxruntime", components, dtype, options, **kwargs)
    return OrtBackend(folder, device, manifest=manifest, provider=opts.provider, intra_op_threads=opts.intra_op_threads,
                      fp16=opts.fp16, cuda_graph=opts.cuda_graph, engine_cache_dir=opts.engine_cache_dir)
