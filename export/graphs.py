"""ONNX export of the truncated UNet and the VAE encoder's moments, with a manifest and an export cache.

Precision: the fp32 graph is traced as is. For fp16/bf16 the networks are copied and cast, except where SD 2.1
overflows or loses its statistics in half precision (spec §2): every GroupNorm runs in fp32 (input cast up, fp32
affine parameters, output cast back), and attention scores and softmax run in fp32 (diffusers' classic attention
processor with ``upcast_attention`` and ``upcast_softmax`` forced on). LayerNorm needs nothing: ONNX
LayerNormalization keeps its statistics in fp32 (``stash_type`` 1).

The exporter is torch's TorchScript tracer (``dynamo=False``), the one that handles symbolic spatial sizes here and
takes seconds; its newest opset is 20. bf16 Conv/MatMul need opset 22, so bf16 graphs are converted to 22.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ManifestError,
    file_sha256,
    load_manifest,
    stable_hash,
    validate_manifest,
    write_manifest,
)

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_DTYPES",
    "default_cache_dir",
    "encode_prompt",
    "export_key",
    "export_onnx",
    "feature_hw",
    "weights_hash",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # the TorchScript exporter's newest
BF16_OPSET = 22  # first opset whose Conv and MatMul accept bfloat16
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # protobuf cannot hold a model over 2 GiB; stay clear of it
UNET_FILE, VAE_FILE = "unet.onnx", "vae_encoder.onnx"
Dtype = Literal["fp32", "fp16", "bf16"]


# -- precision --------------------------------------------------------------------------------------------------


class Fp32GroupNorm(nn.Module):
    """GroupNorm whose statistics and affine transform run in fp32 whatever the input dtype."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float().clone(), requires_grad=False) if norm.affine else None
        self.bias = nn.Parameter(norm.bias.detach().float().clone(), requires_grad=False) if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def low_precision_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` in ``dtype`` with GroupNorm and attention softmax kept in fp32."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    out = copy.deepcopy(module).to(dtype)
    for child in list(out.modules()):
        for attr, grandchild in list(child.named_children()):
            if isinstance(grandchild, nn.GroupNorm):
                setattr(child, attr, Fp32GroupNorm(grandchild))
        if isinstance(child, Attention):
            child.upcast_attention = True
            child.upcast_softmax = True
            child.set_processor(AttnProcessor())
    return out


# -- export wrappers ----------------------------------------------------------------------------------------------


class _UNetGraph(nn.Module):
    """(x_t, timestep, encoder_hidden_states) -> feature; or (x_t, timestep) with a folded prompt embedding."""

    def __init__(self, unet: nn.Module, context: torch.Tensor | None) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("context", context, persistent=False)

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        context = rest[0] if self.context is None else self.context.expand(x_t.shape[0], -1, -1)
        return self.unet(x_t, timestep, context)


class _VaeGraph(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] -> [N, 8, H/8, W/8]
        return self.vae.moments(images)


@contextlib.contextmanager
def _upsample_to_skip_size(unet: nn.Module) -> Iterator[None]:
    """Trace the branch that resizes each upsampler to its skip's size (a Python bool in the forward).

    For a symbolic spatial size the trace must keep that branch: it is exact for any latent size and, for sizes
    divisible by the UNet's total upsampling, gives the same nearest-neighbour result as the scale-2 branch.
    """
    saved = unet.overall_up_factor
    unet.overall_up_factor = 2**62 + 1  # odd and larger than any size: every size "is not a multiple"
    try:
        yield
    finally:
        unet.overall_up_factor = saved


# -- identity and caching ----------------------------------------------------------------------------------------


def weights_hash(*modules: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the modules' parameters and buffers."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    import diffusers
    import onnx

    import dift_fast

    return {"torch": torch.__version__, "onnx": onnx.__version__, "diffusers": diffusers.__version__,
            "dift_fast": dift_fast.__version__}


def export_key(spec: dict[str, Any]) -> str:
    """Hash of everything the exported graphs depend on (``spec`` plus format and tool versions)."""
    return stable_hash({"format": FORMAT, "format_version": FORMAT_VERSION, "tools": tool_versions(), **spec})


def default_cache_dir() -> Path:
    root = Path(os.environ.get("DIFT_FAST_CACHE", Path.home() / ".cache" / "dift-fast"))
    return root / "onnx"


@torch.inference_mode()
def encode_prompt(components: Any, prompt: str) -> torch.Tensor:  # [1, 77, D] float32
    """The text encoder's last hidden state for ``prompt`` (spec §2.4: pad to 77, truncate, no mask)."""
    tok = components.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    encoder = components.text_encoder
    device = next(encoder.parameters()).device
    return encoder(ids.input_ids.to(device))[0][:1].float().cpu()


def feature_hw(geometry: dict[str, int], h: int, w: int) -> tuple[int, int]:
    """Spatial size of block k's feature for a latent of h x w (each downsampler halves, rounding up)."""
    sizes = [(h, w)]
    for _ in range(geometry["num_downsamplers"]):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes[len(sizes) - 1 - geometry["num_upsamplers"]]


# -- export -------------------------------------------------------------------------------------------------------


def _onnx_dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64"}[dtype]


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
           output_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings():
        # Tracer warnings about Python bools of shapes are expected: the branches they freeze are the ones wanted.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


def _finalize(src: Path, dst: Path, opset: int, pin: dict[str, tuple[int, int]] | None) -> None:
    """Re-save a traced graph: static sizes pinned, opset conversion, one external-data file over 2 GB, checker."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    if pin:  # the graph is general in height/width; a static export fixes them on its inputs and outputs
        for value in (*model.graph.input, *model.graph.output):
            if value.name in pin:
                dims = value.type.tensor_type.shape.dim
                for dim, size in zip((dims[2], dims[3]), pin[value.name]):
                    dim.Clear()
                    dim.dim_value = size
        del model.graph.value_info[:]  # traced at another size: let consumers infer the rest
    if opset != max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")):
        from onnx import version_converter

        model = version_converter.convert_version(model, opset)
    model.producer_name = "dift-fast"
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(dst.with_name(dst.name + ".data"), 0o666 & ~umask)  # onnx creates it 0600; match the .onnx
    else:
        onnx.save_model(model, str(dst))
    del model
    onnx.checker.check_model(str(dst))  # by path: works for external data and models over 2 GB


def _io_spec(names: list[str], shapes: list[list[int | str]], dtypes: list[torch.dtype]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": s, "dtype": _onnx_dtype_name(d)} for n, s, d in zip(names, shapes, dtypes)]


def export_onnx(
    components: Any,
    out_dir: str | os.PathLike | None = None,
    *,
    dtype: Dtype = "fp32",
    image_size: tuple[int, int] | None = (768, 768),
    dynamic_size: bool = False,
    fixed_prompt: str | None = None,
    config: Any = None,
    opset: int | None = None,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Export the truncated UNet and the VAE encoder (moments) of ``components`` to ONNX.

    Args:
        components: :class:`dift_fast.loading.DiftComponents` (fp32, as ``load_components`` returns them).
        out_dir: folder for the graphs and ``manifest.json``; default a cache folder named by the export key.
        dtype: weight and compute dtype of the graphs (GroupNorm and attention softmax stay fp32).
        image_size: (W, H) of the images; the static spatial size, or the trace size when ``dynamic_size``.
        dynamic_size: symbolic height and width (batch is always dynamic).
        fixed_prompt: fold this prompt's embedding into the UNet graph (it then takes only x_t and timestep).
        config: the :class:`dift_fast.DiftConfig` to record in the manifest.
        opset: ONNX opset (default 20, 22 for bf16).
        force: export even when ``out_dir`` already holds this export.

    Returns:
        (folder, manifest). When the folder already holds an export with the same key, nothing is exported.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(EXPORT_DTYPES)}")
    opset = opset or (BF16_OPSET if dtype == "bf16" else DEFAULT_OPSET)
    if dtype == "bf16" and opset < BF16_OPSET:
        raise ValueError(f"bf16 graphs need opset >= {BF16_OPSET} (bfloat16 Conv/MatMul); got {opset}")
    unet, vae = components.unet, components.vae
    if image_size is None:
        if not dynamic_size:
            raise ValueError("a static export needs image_size=(W, H); or pass dynamic_size=True")
        image_size = (64 * vae.downsample_factor, 64 * vae.downsample_factor)
    W, H = (int(v) for v in image_size)
    f = vae.downsample_factor
    if W % f or H % f:
        raise ValueError(f"image_size {W}x{H} must be a multiple of {f} (the VAE's downsampling)")
    context = encode_prompt(components, fixed_prompt) if fixed_prompt is not None else None
    spec = {
        "model": {"id": components.model_id, "revision": components.revision,
                  "weights_sha256": weights_hash(unet, vae)},
        "up_ft_index": unet.up_ft_index,
        "dtype": dtype,
        "opset": opset,
        "dynamic_size": dynamic_size,
        "image_size": None if dynamic_size else [W, H],
        "fixed_prompt": None if fixed_prompt is None else {
            "text": fixed_prompt, "embedding_sha256": hashlib.sha256(context.numpy().tobytes()).hexdigest()},
    }
    key = export_key(spec)
    folder = Path(out_dir) if out_dir is not None else default_cache_dir() / key[:24]
    if not force and (folder / MANIFEST_NAME).is_file():
        with contextlib.suppress(ManifestError):
            manifest = load_manifest(folder)
            if manifest["export_key"] == key:
                logger.info("export cached: %s already holds this export (key %s)", folder, key[:12])
                return folder, manifest
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).unlink(missing_ok=True)  # the folder is not a valid export until the new one is written

    tdtype = EXPORT_DTYPES[dtype]
    t0 = time.perf_counter()
    unet_x = low_precision_copy(unet, tdtype) if tdtype != torch.float32 else unet
    vae_x = low_precision_copy(vae, tdtype) if tdtype != torch.float32 else vae
    D = int(unet.config.cross_attention_dim)
    n_trace = 2  # not 1: a batch of 1 can be specialised into reshape constants
    h, w = H // f, W // f
    # Trace at a small latent with symbolic height/width (the tracer runs the network, and fp16 convolutions are
    # very slow on CPUs); a static export pins its sizes afterwards. The side is not a multiple of the total
    # upsampling, and the general resize-to-skip branch is traced either way.
    small = 2 * unet.overall_up_factor + 2
    x = torch.randn(n_trace, 4, small, small, dtype=tdtype)
    t = torch.tensor([261], dtype=torch.int64)
    sp = ("height", "width") if dynamic_size else (h, w)
    fsp = ("feature_height", "feature_width")
    unet_inputs = ["x_t", "timestep"] + ([] if context is not None else ["encoder_hidden_states"])
    unet_args: tuple[torch.Tensor, ...] = (x, t)
    axes: dict[str, dict[int, str]] = {"x_t": {0: "batch", 2: "height", 3: "width"},
                                       "features": {0: "batch", 2: fsp[0], 3: fsp[1]}}
    if context is None:
        unet_args += (torch.randn(n_trace, 77, D, dtype=tdtype),)
        axes["encoder_hidden_states"] = {0: "batch"}
    graph = _UNetGraph(unet_x, None if context is None else context.to(tdtype)).eval()
    images = torch.rand(n_trace, 3, small * f, small * f, dtype=tdtype) * 2 - 1
    vae_axes = {"images": {0: "batch", 2: "image_height", 3: "image_width"},
                "moments": {0: "batch", 2: "height", 3: "width"}}
    geometry = {"channels": int(unet.out_channels),
                "num_downsamplers": sum(1 for b in unet.down_blocks if getattr(b, "downsamplers", None)),
                "num_upsamplers": sum(1 for b in unet.up_blocks if getattr(b, "upsamplers", None))}
    unet_pin = None if dynamic_size else {"x_t": (h, w), "features": feature_hw(geometry, h, w)}
    vae_pin = None if dynamic_size else {"images": (H, W), "moments": (h, w)}

    with tempfile.TemporaryDirectory(dir=folder, prefix=".trace-") as tmp, torch.inference_mode(False), \
            torch.no_grad():
        with _upsample_to_skip_size(unet_x):
            _trace(graph, unet_args, Path(tmp) / UNET_FILE, unet_inputs, ["features"], axes, min(opset, 20))
        _finalize(Path(tmp) / UNET_FILE, folder / UNET_FILE, opset, unet_pin)
        _trace(_VaeGraph(vae_x).eval(), (images,), Path(tmp) / VAE_FILE, ["images"], ["moments"], vae_axes,
               min(opset, 20))
        _finalize(Path(tmp) / VAE_FILE, folder / VAE_FILE, opset, vae_pin)
    seconds = time.perf_counter() - t0
    if context is not None:
        import numpy as np

        np.save(folder / "prompt_embedding.npy", context.numpy())

    C = geometry["channels"]
    feat_shape: list[int | str] = ["batch", C, *(fsp if dynamic_size else feature_hw(geometry, h, w))]
    graphs = {
        "unet": {
            "file": UNET_FILE,
            "inputs": _io_spec(unet_inputs, [["batch", 4, *sp], [1], ["batch", 77, D]][: len(unet_inputs)],
                               [tdtype, torch.int64, tdtype]),
            "outputs": _io_spec(["features"], [feat_shape], [tdtype]),
            "geometry": geometry,
        },
        "vae_encoder": {
            "file": VAE_FILE,
            "inputs": _io_spec(["images"], [["batch", 3, *(("image_height", "image_width") if dynamic_size
                                                          else (H, W))]], [tdtype]),
            "outputs": _io_spec(["moments"], [["batch", 2 * vae.latent_channels, *sp]], [tdtype]),
            "downsample_factor": f,
            "scaling_factor": vae.scaling_factor,
        },
    }
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_NAME
                   and (p.name.startswith(("unet.onnx", "vae_encoder.onnx")) or p.name == "prompt_embedding.npy"))
    files = {n: {"size": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)} for n in names}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "export_key": key,
        **spec,
        "config": config.to_dict() if config is not None else None,
        "graphs": graphs,
        "files": files,
        "content_hash": stable_hash({k: v["sha256"] for k, v in sorted(files.items())}),
        "exporter": "torch.onnx.export(dynamo=False)",
        "tool_versions": tool_versions(),
        "export_seconds": round(seconds, 2),
        "precision_notes": None if dtype == "fp32" else
        f"weights and activations in {dtype}; GroupNorm statistics and attention scores/softmax in fp32",
    }
    problems = validate_manifest(manifest, folder)
    if problems:  # a bug here, not a user error
        raise RuntimeError(f"export wrote an inconsistent manifest: {problems}")
    write_manifest(folder, manifest)
    logger.info("exported %s (%s, block %d) to %s in %.1f s", components.model_id, dtype, unet.up_ft_index, folder,
                seconds)
    return folder, manifest

