"""Options shared by the subcommands that build an extractor."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..backbones.catalog import default_preset_for_model, preset_card
from ..config import AUTO_BATCH, DEFAULT_MODEL, DTYPES, PRESETS

# What an option needs that is optional: (extra, the feature as the user names it, the modules; None: all the extra's)
Need = tuple[str, str, tuple[str, ...] | None]


def declare_needs(
    parser: argparse.ArgumentParser,
    needs: Callable[[argparse.Namespace], Iterable[Need]] | None,
    *,
    backend: bool = True,
) -> None:
    """Say which optional packages a subcommand needs for the options given; checked before it runs.

    ``backend=False``: the command only reports on ``--backend`` (``info``), so a missing backend is not an error.
    """
    parser.set_defaults(needs=needs, needs_backend=backend)


def check_needs(args: argparse.Namespace) -> None:
    """Import every optional package the parsed command needs, before any work (and before any model loads).

    Raises:
        MissingExtraError: naming the package and the extra to install (``pip install 'dift-fast[viz]'``).
    """
    from ..extras import require_extra

    needs = list(args.needs(args)) if callable(getattr(args, "needs", None)) else []
    if getattr(args, "backend", None) == "onnxruntime" and getattr(args, "needs_backend", True):
        needs.append(("onnx", "--backend onnxruntime", ("onnxruntime", "onnx")))
    if getattr(args, "ray", None) is not None:
        needs.append(("ray", "--ray", ("ray.data",)))
    for extra, feature, modules in needs:
        require_extra(extra, feature, modules)


class DeprecatedAlias(argparse.Action):
    """The old spelling of a renamed option: still works, warns on stderr, hidden from ``--help``."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"dift-fast: warning: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model/--revision/--preset and the DiftConfig overrides."""
    g = parser.add_argument_group("model and configuration")
    g.add_argument(
        "--model",
        default=None,
        help=f"SD: hub id, diffusers folder or tiny-random (default {DEFAULT_MODEL}, unless the preset names one); "
        "DIFT_adm: the checkpoint 256x256_diffusion_uncond.pt or tiny-random-adm",
    )
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="named settings, which also pick the backbone: SD spair/hpatches/davis, DIFT_adm adm-spair/adm-hpatches/"
        "adm-davis, cleandift (default: spair, or adm-spair for a checkpoint file or tiny-random-adm)",
    )
    g.add_argument(
        "--unet-weights",
        default=None,
        metavar="FILE",
        help="SD/CleanDIFT: a .safetensors file (local, or owner/repo/filename on the hub) replacing the UNet's "
        "weights (the cleandift preset's default: CleanDIFT's file)",
    )
    g.add_argument("--t", type=int, default=None, help="diffusion timestep 0..999 (preset's by default)")
    g.add_argument(
        "--up-ft-index",
        "--block",
        dest="up_ft_index",
        type=int,
        default=None,
        help="the feature block: SD's UNet up block 0..3, ADM's output block 0..17 (preset's by default)",
    )
    g.add_argument("--ensemble-size", type=int, default=None, help="noise draws averaged per image (E)")
    g.add_argument(
        "--image-size",
        default=None,
        help="WxH images are resized to, e.g. 768x768, or native: keep each image's size, floored to multiples of 8",
    )
    g.add_argument("--prompt", default=None, help="text prompt (default: empty)")
    g.add_argument("--dtype", default=None, choices=DTYPES, help="compute dtype (default fp32 on CPU, bf16 on CUDA)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    g.add_argument("--seed", type=int, default=None, help="noise seed (default 0)")
    g.add_argument(
        "--batch-size",
        type=parse_batch_size,
        default=None,
        help="images per micro-batch, or auto (default): one network call on CUDA, sized from free GPU memory by "
        "auto; on the CPU the networks still run image by image (bit-identical features whatever the batch) and "
        "auto is 1",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch backend: torch.compile the networks (CPU and CUDA; CUDA graphs on CUDA with a fixed "
        "--image-size); the first batch of each shape compiles, which takes a while",
    )
    g.add_argument(
        "--tf32",
        action="store_true",
        default=None,
        help="torch backend, fp32 on CUDA: allow TF32 in convolutions and matmuls (faster; features ~1e-3 from "
        "fp32, so they get another feature identity)",
    )
    g.add_argument(
        "--backend", default=None, choices=("torch", "onnxruntime", "tensorrt"), help="what runs the networks"
    )
    g.add_argument(
        "--export-dir",
        default=None,
        metavar="DIR",
        help="onnxruntime/tensorrt: ONNX export folder (from `dift-fast export --out DIR`); exported there when empty",
    )
    g.add_argument("--engine", dest="export_dir", metavar="DIR", action=DeprecatedAlias, new="--export-dir")
    g.add_argument(
        "--no-build", action="store_true", help="onnxruntime/tensorrt: fail instead of exporting or building engines"
    )


NATIVE_SIZE = "native"  # --image-size native: DiftConfig.image_size=None, each image keeps its size (floored)


def parse_batch_size(text: str) -> int | str:
    """``--batch-size``: a whole number >= 1 or ``auto``."""
    if text.strip().lower() == AUTO_BATCH:
        return AUTO_BATCH
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or {AUTO_BATCH!r}, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or {AUTO_BATCH!r}, got {text!r}")
    return value


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size {text!r}: expected WIDTHxHEIGHT, e.g. 768x768 (or native)") from None
    return w, h


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """DiftConfig overrides from the parsed options (only the ones given)."""
    out: dict[str, Any] = {}
    for field in (
        "model",
        "revision",
        "unet_weights",
        "t",
        "up_ft_index",
        "ensemble_size",
        "prompt",
        "dtype",
        "device",
        "seed",
        "batch_size",
        "backend",
        "compile",
        "tf32",
    ):
        value = getattr(args, field, None)
        if value is not None:
            out[field] = value
    if getattr(args, "image_size", None):
        out["image_size"] = None if args.image_size.lower() == NATIVE_SIZE else parse_size(args.image_size)
        if out["image_size"] is None and (card := preset_card(resolved_preset(args))).size_multiple != 8:
            raise ValueError(
                f"--image-size native keeps each image's size floored to multiples of 8, but backbone {card.name!r} "
                f"needs multiples of {card.size_multiple}; give --image-size WxH (multiples of {card.size_multiple})"
            )
    return out


def backend_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The backend options given on the command line (``--export-dir``, ``--no-build``), as a dict."""
    options: dict[str, Any] = {}
    if getattr(args, "export_dir", None):
        options["export_dir"] = args.export_dir
    if getattr(args, "no_build", False):
        options["no_build"] = True
    return options


def load_extractor(args: argparse.Namespace, **backend_options: Any) -> Any:
    from ..extractor import DiftExtractor

    options = {**backend_options_from_args(args), **backend_options}
    if options and (args.backend or "torch") == "torch":
        raise ValueError("--export-dir and --no-build apply to --backend onnxruntime or tensorrt")
    return DiftExtractor.from_pretrained(preset=resolved_preset(args), backend_options=options or None,
                                         **config_overrides(args))


def resolved_preset(args: argparse.Namespace) -> str:
    """``--preset``, or the default preset of the backbone ``--model`` points to."""
    return args.preset or default_preset_for_model(args.model)
