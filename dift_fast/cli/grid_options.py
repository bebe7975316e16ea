"""``--timesteps`` and ``--blocks``: the (t, block) grid of ``dift-fast extract`` and ``dift-fast sweep``."""

from __future__ import annotations

import argparse
from typing import Any

from .common import backend_options_from_args, config_overrides, resolved_preset

RANGE_HELP = "comma-separated numbers and ranges start:stop:step (stop excluded, as in Python: 0:500:50 is 0..450)"


def add_grid_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Add ``--timesteps`` and ``--blocks`` (each a list or a Python-style range)."""
    g = parser.add_argument_group("(t, block) grid: every t with every block, from one network pass per image and t")
    g.add_argument(
        "--timesteps",
        default=None,
        required=required,
        metavar="LIST",
        help=f"timesteps 0..999: {RANGE_HELP}" + ("" if required else "; instead of --t"),
    )
    g.add_argument(
        "--blocks",
        default=None,
        required=required,
        metavar="LIST",
        help="feature blocks (SD/CleanDIFT 0..3, ADM 0..17): the same syntax"
        + ("" if required else "; instead of --block"),
    )


def grid_from_args(args: argparse.Namespace, config: Any) -> tuple[list[int], list[int]] | None:
    """(timesteps, blocks) from ``--timesteps``/``--blocks`` (the config's t or block for the one not given), checked
    against the config's backbone; None when neither is given."""
    from ..grid import check_grid, parse_int_spec

    spec_t, spec_k = getattr(args, "timesteps", None), getattr(args, "blocks", None)
    if spec_t is None and spec_k is None:
        return None
    if spec_t is not None and getattr(args, "t", None) is not None:
        raise ValueError("give --timesteps or --t, not both")
    if spec_k is not None and getattr(args, "up_ft_index", None) is not None:
        raise ValueError("give --blocks or --block (--up-ft-index), not both")
    timesteps = parse_int_spec(spec_t, "--timesteps") if spec_t is not None else [config.t]
    blocks = parse_int_spec(spec_k, "--blocks") if spec_k is not None else [config.up_ft_index]
    check_grid(config.backbone, timesteps, blocks)
    return timesteps, blocks


def base_config(args: argparse.Namespace) -> Any:
    """The DiftConfig of the preset and overrides on the command line."""
    from ..config import DiftConfig

    return DiftConfig.from_preset(resolved_preset(args), **config_overrides(args))


def load_grid_extractor(args: argparse.Namespace, timesteps: list[int], blocks: list[int]) -> Any:
    """The extractor of a grid: the command line's settings, its network loaded to the grid's deepest block."""
    from ..extractor import DiftExtractor
    from ..grid import grid_config

    options = backend_options_from_args(args)
    if options and (args.backend or "torch") == "torch":
        raise ValueError("--export-dir and --no-build apply to --backend onnxruntime or tensorrt")
    config = grid_config(base_config(args), timesteps, blocks)
    return DiftExtractor.from_pretrained(config=config, backend_options=options or None)
