"""Options shared by the subcommands that build an extractor."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import DEFAULT_MODEL, DTYPES, PRESETS


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model/--revision/--preset and the DiftConfig overrides."""
    g = parser.add_argument_group("model and configuration")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local diffusers folder or tiny-random (default {DEFAULT_MODEL})",
    )
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument(
        "--preset", default="spair", choices=sorted(PRESETS), help="named settings from the paper (default spair)"
    )
    g.add_argument("--t", type=int, default=None, help="diffusion timestep 0..999 (preset's by default)")
    g.add_argument("--up-ft-index", type=int, default=None, help="UNet up block 0..3 whose output is the feature")
    g.add_argument("--ensemble-size", type=int, default=None, help="noise draws averaged per image (E)")
    g.add_argument("--image-size", default=None, help="WxH images are resized to, e.g. 768x768")
    g.add_argument("--prompt", default=None, help="text prompt (default: empty)")
    g.add_argument("--dtype", default=None, choices=DTYPES, help="compute dtype (default fp32 on CPU, bf16 on CUDA)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    g.add_argument("--seed", type=int, default=None, help="noise seed (default 0)")
    g.add_argument("--batch-size", type=int, default=None, help="images per micro-batch")
    g.add_argument(
        "--backend", default=None, choices=("torch", "onnxruntime", "tensorrt"), help="what runs the networks"
    )
    g.add_argument(
        "--engine",
        default=None,
        metavar="DIR",
        help="onnxruntime/tensorrt: export folder (dift-fast export --out DIR); exported there when empty",
    )
    g.add_argument(
        "--no-build", action="store_true", help="onnxruntime/tensorrt: fail instead of exporting or building engines"
    )


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size {text!r}: expected WIDTHxHEIGHT, e.g. 768x768") from None
    return w, h


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """DiftConfig overrides from the parsed options (only the ones given)."""
    out: dict[str, Any] = {"model": args.model}
    for field in (
        "revision",
        "t",
        "up_ft_index",
        "ensemble_size",
        "prompt",
        "dtype",
        "device",
        "seed",
        "batch_size",
        "backend",
    ):
        value = getattr(args, field, None)
        if value is not None:
            out[field] = value
    if getattr(args, "image_size", None):
        out["image_size"] = parse_size(args.image_size)
    return out


def load_extractor(args: argparse.Namespace, **backend_options: Any) -> Any:
    from ..extractor import DiftExtractor

    if getattr(args, "engine", None) or getattr(args, "no_build", False):
        if (args.backend or "torch") == "torch":
            raise ValueError("--engine and --no-build apply to --backend onnxruntime or tensorrt")
        if args.engine:
            backend_options.setdefault("engine_dir", args.engine)
        if args.no_build:
            backend_options.setdefault("no_build", True)
    return DiftExtractor.from_pretrained(
        preset=args.preset, backend_options=backend_options or None, **config_overrides(args)
    )
