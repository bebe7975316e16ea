"""``dift-fast export``: ONNX graphs of a backbone's truncated network and its encoder (if any), with a manifest.

The exporter lives in the separately installed ``dift_fast.export`` package (the onnx extra); it is imported only
when this command runs, so the library itself never depends on it.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..backbones.catalog import default_preset_for_model
from ..config import DEFAULT_MODEL, PRESETS
from .common import declare_needs, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the networks to ONNX (for --backend onnxruntime/tensorrt)",
        description=(
            "Export the truncated network (up to the preset's block) and, for a backbone with one, the encoder "
            "(VAE moments) to ONNX, with a manifest.json. Batch is dynamic; spatial size is the preset's unless "
            "--dynamic-size. Exporting the same inputs again does nothing. Any backbone: e.g. --preset adm-spair "
            "--model 256x256_diffusion_uncond.pt. Run with: dift-fast extract --backend onnxruntime --export-dir DIR."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the graphs and manifest.json")
    p.add_argument("--model", default=None, help=f"SD hub id, diffusers folder or tiny-random (default "
                                                 f"{DEFAULT_MODEL}, unless the preset names one); ADM checkpoint or "
                                                 "tiny-random-adm")
    p.add_argument("--revision", default=None, help="hub revision")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="backbone, block and size (default spair, or adm-spair for a checkpoint file)")
    p.add_argument("--unet-weights", default=None, metavar="FILE",
                   help="SD/CleanDIFT: .safetensors replacing the UNet's weights (local or owner/repo/filename)")
    p.add_argument("--up-ft-index", "--block", dest="up_ft_index", type=int, default=None,
                   help="the feature block (preset's by default)")
    p.add_argument("--image-size", default=None, help="WxH of the static graph (preset's by default)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="graph weights and compute (GroupNorm statistics stay fp32; attention softmax runs in the "
                        "graph dtype, fp32 inside TensorRT's fused kernel); default fp32")
    p.add_argument("--dynamic-size", action="store_true", help="symbolic height and width")
    p.add_argument("--fixed-prompt", default=None, metavar="TEXT",
                   help="fold this prompt's embedding into the UNet graph (no text input)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20; 22 for bf16)")
    p.add_argument("--force", action="store_true", help="export even if DIR already holds this export")
    p.set_defaults(func=run)
    declare_needs(p, lambda args: [("onnx", "export (ONNX graphs)", ("onnx",))])


def run(args: argparse.Namespace) -> int:
    from ..config import DiftConfig
    from ..loading import load_components

    try:
        graphs = importlib.import_module("dift_fast.export.graphs")
    except ImportError as err:
        raise RuntimeError(f"export needs the onnx extra (pip install 'dift-fast[onnx]'): {err}") from None
    overrides = {k: v for k, v in (("model", args.model), ("revision", args.revision)) if v is not None}
    if args.unet_weights is not None:
        overrides["unet_weights"] = args.unet_weights
    if args.up_ft_index is not None:
        overrides["up_ft_index"] = args.up_ft_index
    if args.image_size:
        overrides["image_size"] = parse_size(args.image_size)
    if args.fixed_prompt is not None:
        overrides["prompt"] = args.fixed_prompt
    config = DiftConfig.from_preset(args.preset or default_preset_for_model(args.model), **overrides)
    components = load_components(config)
    folder, manifest = graphs.export_onnx(
        components, Path(args.out), dtype=args.dtype, image_size=config.image_size, dynamic_size=args.dynamic_size,
        fixed_prompt=args.fixed_prompt, config=config, opset=args.opset, force=args.force,
    )
    total = sum(f["size"] for f in manifest["files"].values())
    shape = manifest["graphs"]["unet"]["outputs"][0]["shape"]
    print(f"{folder}: {', '.join(sorted(manifest['files']))} ({total / 1e6:.1f} MB), {manifest['dtype']}, "
          f"{config.backbone} block {manifest['up_ft_index']}, features {shape}, opset {manifest['opset']}")
    return 0
