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

from .graphs import EXPORT_DTYPES, export_onnx, feature_hw, weights_hash
from .manifest import MANIFEST_NAME, ManifestError, load_manifest

__all__ = ["OrtBackend", "create", "resolve_export"]

logger = logging.getLogger(__name__)

_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
_DTYPE_NAMES = {v: k for k, v in EXPORT_DTYPES.items()}


def resolve_export(components: Any, dtype: torch.dtype, engine_dir: str | os.PathLike | None, *,
                   no_build: bool = False, check_weights: bool = True) -> tuple[Path, dict[str, Any]]:
    """The export folder to run: ``engine_dir`` when it holds an export, else a new (cached) dynamic-size export.

    An existing export must be of the same model (weights hash) and block; its dtype wins over ``dtype``.
    """
    if engine_dir is not None and (Path(engine_dir) / MANIFEST_NAME).is_file():
        folder = Path(engine_dir)
        manifest = load_manifest(folder)
        if manifest["up_ft_index"] != components.unet.up_ft_index:
            raise ValueError(f"export {folder} is of up block {manifest['up_ft_index']}, the extractor wants "
                             f"up_ft_index={components.unet.up_ft_index}; export again with --up-ft-index")
        if check_weights and manifest["model"]["weights_sha256"] != weights_hash(components.unet, components.vae):
            raise ValueError(f"export {folder} was made from other weights ({manifest['model']['id']}) than the "
                             f"loaded model ({components.model_id}); export this model or pass its --model")
        want = _DTYPE_NAMES.get(dtype, str(dtype))
        if manifest["dtype"] != want:
            logger.warning("export %s holds %s graphs; running them in %s (the requested %s does not apply)",
                           folder, manifest["dtype"], manifest["dtype"], want)
        return folder, manifest
    if no_build:
        where = engine_dir if engine_dir is not None else "the export cache"
        raise ManifestError(f"no export in {where} and no_build is set; run `dift-fast export --out DIR` first")
    dtype_name = _DTYPE_NAMES.get(dtype)
    if dtype_name is None:
        raise ValueError(f"dtype {dtype} cannot be exported; use fp32, fp16 or bf16")
    logger.info("exporting ONNX graphs (dynamic size, %s) for the onnxruntime backend", dtype_name)
    return export_onnx(components, engine_dir, dtype=dtype_name, dynamic_size=True)


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
        self.vae = ort.InferenceSession(str(self.folder / graphs["vae_encoder"]["file"]), opts, providers=providers)
        self.geometry = graphs["unet"]["geometry"]
        self.moment_channels = graphs["vae_encoder"]["outputs"][0]["shape"][1]
        self.downsample_factor = graphs["vae_encoder"]["downsample_factor"]
        self.fixed_context: torch.Tensor | None = None
        if self.manifest["fixed_prompt"] is not None:
            self.fixed_context = torch.from_numpy(np.load(self.folder / "prompt_embedding.npy"))[0]  # [77, D]
        self._buffers: dict[tuple[str, tuple[int, ...]], tuple[int, dict[str, torch.Tensor], Any]] = {}

    @property
    def provider(self) -> str:
        return self.unet.get_providers()[0]

    # -- Backend protocol ---------------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, H, W = images.shape
        f = self.downsample_factor
        (moments,) = self._run(self.vae, "vae", {"images": images.to(self.dtype)},
                               {"moments": (n, self.moment_channels, H // f, W // f)})
        mean, logvar = torch.chunk(moments.float(), 2, dim=1)
        return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        n, _, h, w = latents.shape
        feeds = {"x_t": latents.to(self.dtype), "timestep": torch.tensor([int(timestep)], dtype=torch.int64)}
        if self.fixed_context is None:
            feeds["encoder_hidden_states"] = context.to(self.dtype)
        else:
            self._check_prompt(context)
        fh, fw = feature_hw(self.geometry, h, w)
        (feats,) = self._run(self.unet, "unet", feeds, {"features": (n, self.geometry["channels"], fh, fw)})
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


def create(components: Any, device: torch.device, dtype: torch.dtype, *, engine_dir: str | os.PathLike | None = None,
           no_build: bool = False, provider: str | None = None, intra_op_threads: int | None = None,
           fp16: bool = False, cuda_graph: bool = False, engine_cache_dir: str | os.PathLike | None = None,
           check_weights: bool = True) -> OrtBackend:
    """Entry point (``dift_fast.backends``): an :class:`OrtBackend` for loaded components.

    Args:
        engine_dir: an export folder (``dift-fast export --out DIR``); exported there (dynamic size, ``dtype``)
            when it holds none; default: a cache folder keyed by the export's inputs.
        no_build: raise instead of exporting when there is no export.
        provider: "cpu", "cuda" or "tensorrt" (onnxruntime-gpu); default from ``device``.
        intra_op_threads: CPU threads per session (default: onnxruntime's choice).
        fp16: TensorRT EP only: allow fp16 kernels for an fp32 graph.
        cuda_graph: capture the CUDA EP (or TensorRT EP) run in a CUDA graph.
        engine_cache_dir: TensorRT EP engine and timing cache (default ``engine_dir/ort_trt_cache``).
        check_weights: verify that an existing export was made from these weights (hashes them once).
    """
    folder, manifest = resolve_export(components, dtype, engine_dir, no_build=no_build, check_weights=check_weights)
    return OrtBackend(folder, device, manifest=manifest, provider=provider, intra_op_threads=intra_op_threads,
                      fp16=fp16, cuda_graph=cuda_graph, engine_cache_dir=engine_cache_dir)
