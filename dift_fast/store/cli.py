"""Store mode of ``dift-fast extract`` (``--out STORE``): options and runner."""

from __future__ import annotations

import argparse


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Options that only store mode uses."""
    g = parser.add_argument_group("store mode (ROOT folder -> STORE folder)")
    g.add_argument("--workers", type=int, default=2, help="decode workers")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run")


def run_store_extract(args: argparse.Namespace) -> int:
    raise NotImplementedError("store mode: --out must end with .safetensors for now")
