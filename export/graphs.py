"""ONNX export of a backbone's truncated network and its encoder's moments: tracing, static sizes, the export folder.

Backbone-generic: the network graph (``unet.onnx``: ``x_t``, ``timestep`` and, for a conditioned backbone without a
folded prompt, ``encoder_hidden_states``) is written for every backbone, the encoder graph (``vae_encoder.onnx``)
only for one with an encoder (SD, CleanDIFT; not ADM, which runs in pixel space).

Precision rewriting is in :mod:`.precision`, what an export is keyed by in :mod:`.keys`, and the manifest (written
last: the commit point of an export) in :mod:`.manifest`.

The exporter is torch's TorchScript tracer (``dynamo=False``), the one that handles symbolic spatial sizes here and
takes seconds; its newest opset is 20. bf16 Conv/MatMul need opset 22, so bf16 graphs are converted to 22.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dift_fast.atomic import atomic_path
from dift_fast.geometry import NetworkGeometry
from dift_fast.prompts import encode_prompt

from .attention import ATTENTION_FORM, fusable_attention
from .keys import default_cache_dir, export_key, tool_versions, weights_hash
from .manifest import (
    MANIFEST_NAME,
    ManifestError,
    build_manifest,
    geometry_record,
    load_manifest,
    write_manifest,
)
from .precision import EXPORT_DTYPES, Dtype, low_precision_copy

__all__ = ["BF16_OPSET", "DEFAULT_OPSET", "UNET_FILE", "VAE_FILE", "export_onnx"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # the TorchScript exporter's newest
BF16_OPSET = 22  # first opset whose Conv and MatMul accept bfloat16
EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # protobuf cannot hold a model over 2 GiB; stay clear of it
UNET_FILE, VAE_FILE = "unet.onnx", "vae_encoder.onnx"


# -- export wrappers ----------------------------------------------------------------------------------------------


class _UNetGraph(nn.Module):
    """(x_t, timestep[, encoder_hidden_states]) -> feature; a folded prompt embedding, or none (unconditional)."""

    def __init__(self, unet: nn.Module, context: torch.Tensor | None, conditioned: bool) -> None:
        super().__init__()
        self.unet = unet
        self.conditioned = conditioned
        self.register_buffer("context", context, persistent=False)

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        if not self.conditioned:
            return self.unet(x_t, timestep, None)
        context = rest[0] if self.context is None else self.context.expand(x_t.shape[0], -1, -1)
        return self.unet(x_t, timestep, context)


class _VaeGraph(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] -> [N, 8, H/8, W/8]
        return self.vae.moments(images)


# -- export -------------------------------------------------------------------------------------------------------


def _onnx_dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64"}[dtype]


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
           output_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings(), fusable_attention(module):  # attention in the form TensorRT fuses
        # Tracer warnings about Python bools of shapes are expected: the branches they freeze are the ones wanted.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


def _finalize(src: Path, dst: Path, opset: int, pin: dict[str, tuple[int, int]] | None) -> None:
    """Re-save a traced graph: static sizes pinned, opset conversion, one external-data file over 2 GB, checker.

    ``dst`` is written atomically; an external-data file is written in ``src``'s private folder first and moved
    beside ``dst``, so nothing planted in the export folder is written through.
    """
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
        stage = src.parent / "final"  # private (inside the trace folder), on the export folder's filesystem
        stage.mkdir(exist_ok=True)
        data = dst.name + ".data"
        # Created here with 0o666 less the umask (onnx would create it 0600); onnx then appends to it.
        os.close(os.open(stage / data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        onnx.save_model(model, str(stage / dst.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
        del model
        onnx.checker.check_model(str(stage / dst.name))  # by path: works for external data and models over 2 GB
        os.replace(stage / data, dst.with_name(data))  # a rename replaces whatever is there, never writes through it
        os.replace(stage / dst.name, dst)
        return
    with atomic_path(dst, fsync=False) as tmp:  # fsync: the manifest, written last, is the commit point
        onnx.save_model(model, str(tmp))
        del model
        onnx.checker.check_model(str(tmp))


def _io_spec(names: list[str], shapes: list[list[int | str]], dtypes: list[torch.dtype]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": s, "dtype": _onnx_dtype_name(d)} for n, s, d in zip(names, shapes, dtypes)]


def _check_export_folder(folder: Path) -> None:
    """Refuse to export into a file, or into a folder holding anything but an export (files of the user's)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"export folder {folder} is a file; give a folder (new, empty, or holding an export)")
    if not folder.is_dir() or (folder / MANIFEST_NAME).is_file():
        return  # new, or an export of ours (its files are replaced by the new export)
    # Hidden ".trace-*" folders and ".*.tmp" files are ours, and so are the graphs of an export killed before it
    # wrote its manifest (dift-fast is the producer named in their first bytes) and the files beside them.
    theirs = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and not _left_by_export(p))
    if theirs:
        shown = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
        raise ValueError(f"export folder {folder} is not empty ({shown}) and holds no {MANIFEST_NAME}: not an "
                         "export of dift-fast, or an unfinished one. Nothing was written there; give a new or empty "
                         "folder, or delete its contents")


def _left_by_export(path: Path) -> bool:
    if path.name in (UNET_FILE, VAE_FILE):
        with open(path, "rb") as f:  # ModelProto fields are written in order: producer_name (2) is in the header
            return b"dift-fast" in f.read(64)
    return path.name in (UNET_FILE + ".data", VAE_FILE + ".data", "prompt_embedding.npy")


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
    """Export the truncated network and, when the backbone has one, the encoder (moments) of ``components`` to ONNX.

    Args:
        components: :class:`dift_fast.loading.DiftComponents` of any backbone (fp32, as ``load_components`` returns
            them).
        out_dir: folder for the graphs and ``manifest.json``; default a cache folder named by the export key.
        dtype: weight and compute dtype of the graphs (GroupNorm statistics stay fp32; the attention softmax is in the
            graph dtype, :mod:`dift_fast.export.attention`).
        image_size: (W, H) of the images; the static spatial size, or the trace size when ``dynamic_size``.
        dynamic_size: symbolic height and width (batch is always dynamic).
        fixed_prompt: fold this prompt's embedding into the network graph (it then takes only x_t and timestep);
            conditioned backbones only.
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
    backbone = components.backbone
    conditioned = backbone.conditioned
    if fixed_prompt is not None and not conditioned:
        raise ValueError(f"backbone {backbone.name!r} takes no text: a fixed prompt does not apply")
    components.ensure_networks()  # components loaded for an accelerated backend come without them
    net, encoder = components.network, components.encoder
    geometry = NetworkGeometry.of(net, encoder)
    multiple, f = geometry.size_multiple, geometry.downsample_factor
    if image_size is None:
        if not dynamic_size:
            raise ValueError("a static export needs image_size=(W, H); or pass dynamic_size=True")
        image_size = (64 * f, 64 * f)
    W, H = (int(v) for v in image_size)
    if W % multiple or H % multiple:
        raise ValueError(f"image_size {W}x{H} must be a multiple of {multiple} (backbone {backbone.name!r})")
    context = None  # [1, 77, D] float32 on the CPU
    if fixed_prompt is not None:
        context = encode_prompt(components.tokenizer, components.text_encoder, fixed_prompt)[None].cpu()
    modules = [mod for mod in (net, encoder) if mod is not None]
    spec = {
        "model": {"id": components.model_id, "revision": components.revision, "weights_sha256": weights_hash(*modules)},
        "up_ft_index": net.feature_block,
        "dtype": dtype,
        "opset": opset,
        "dynamic_size": dynamic_size,
        "image_size": None if dynamic_size else [W, H],
        "fixed_prompt": None if fixed_prompt is None else {
            "text": fixed_prompt, "embedding_sha256": hashlib.sha256(context.numpy().tobytes()).hexdigest()},
        "attention": ATTENTION_FORM,
    }
    if backbone.name != "sd":  # recorded (and keyed) for other backbones; SD exports keep the keys they had
        spec["backbone"] = backbone.name
    key = export_key(spec)
    folder = Path(out_dir) if out_dir is not None else default_cache_dir() / key[:24]
    _check_export_folder(folder)
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
    net_x = low_precision_copy(net, tdtype) if tdtype != torch.float32 else net
    enc_x = encoder if encoder is None or tdtype == torch.float32 else low_precision_copy(encoder, tdtype)
    n_trace = 2  # not 1: a batch of 1 can be specialised into reshape constants
    h, w = H // f, W // f
    # Trace at a small size with symbolic height/width (the tracer runs the network, and fp16 convolutions are
    # very slow on CPUs); a static export pins its sizes afterwards. The network picks the side (for SD's UNet one
    # that is not a multiple of the total upsampling) and traces its general-size path either way.
    small = net.trace_side
    x = torch.randn(n_trace, geometry.latent_channels, small, small, dtype=tdtype)
    t = torch.tensor([261], dtype=torch.int64)
    sp = ("height", "width") if dynamic_size else (h, w)
    fsp = ("feature_height", "feature_width")
    text_input = conditioned and context is None
    unet_inputs = ["x_t", "timestep"] + (["encoder_hidden_states"] if text_input else [])
    unet_args: tuple[torch.Tensor, ...] = (x, t)
    axes: dict[str, dict[int, str]] = {"x_t": {0: "batch", 2: "height", 3: "width"},
                                       "features": {0: "batch", 2: fsp[0], 3: fsp[1]}}
    D = int(net.config.cross_attention_dim) if conditioned else 0
    if text_input:
        unet_args += (torch.randn(n_trace, 77, D, dtype=tdtype),)
        axes["encoder_hidden_states"] = {0: "batch"}
    graph = _UNetGraph(net_x, None if context is None else context.to(tdtype), conditioned).eval()
    unet_pin = None if dynamic_size else {"x_t": (h, w), "features": geometry.feature_hw(h, w)}

    with tempfile.TemporaryDirectory(dir=folder, prefix=".trace-") as tmp, torch.inference_mode(False), \
            torch.no_grad():
        with net_x.general_size_trace():
            _trace(graph, unet_args, Path(tmp) / UNET_FILE, unet_inputs, ["features"], axes, min(opset, 20))
        _finalize(Path(tmp) / UNET_FILE, folder / UNET_FILE, opset, unet_pin)
        if enc_x is not None:
            images = torch.rand(n_trace, 3, small * f, small * f, dtype=tdtype) * 2 - 1
            vae_axes = {"images": {0: "batch", 2: "image_height", 3: "image_width"},
                        "moments": {0: "batch", 2: "height", 3: "width"}}
            vae_pin = None if dynamic_size else {"images": (H, W), "moments": (h, w)}
            _trace(_VaeGraph(enc_x).eval(), (images,), Path(tmp) / VAE_FILE, ["images"], ["moments"], vae_axes,
                   min(opset, 20))
            _finalize(Path(tmp) / VAE_FILE, folder / VAE_FILE, opset, vae_pin)
    seconds = time.perf_counter() - t0
    if context is not None:
        import numpy as np

        with atomic_path(folder / "prompt_embedding.npy", fsync=False) as tmp, open(tmp, "wb") as fd:
            np.save(fd, context.numpy())

    C = geometry.feature_channels
    feat_shape: list[int | str] = ["batch", C, *(fsp if dynamic_size else geometry.feature_hw(h, w))]
    graphs: dict[str, Any] = {
        "unet": {  # the truncated network of any backbone (SD's and ADM's are both UNets)
            "file": UNET_FILE,
            "inputs": _io_spec(unet_inputs, [["batch", geometry.latent_channels, *sp], [1], ["batch", 77, D]]
                               [: len(unet_inputs)], [tdtype, torch.int64, tdtype]),
            "outputs": _io_spec(["features"], [feat_shape], [tdtype]),
            "geometry": geometry_record(geometry),
        },
    }
    if encoder is not None:
        graphs["vae_encoder"] = {
            "file": VAE_FILE,
            "inputs": _io_spec(["images"], [["batch", 3, *(("image_height", "image_width") if dynamic_size
                                                          else (H, W))]], [tdtype]),
            "outputs": _io_spec(["moments"], [["batch", 2 * encoder.latent_channels, *sp]], [tdtype]),
            "downsample_factor": f,
            "scaling_factor": encoder.scaling_factor,
        }
    manifest = build_manifest(folder, key, spec, graphs, config=config, tool_versions=tool_versions(),
                              seconds=seconds)
    write_manifest(folder, manifest)
    logger.info("exported %s (%s, %s block %d) to %s in %.1f s", components.model_id, dtype, backbone.name,
                net.feature_block, folder, seconds)
    return folder, manifest
