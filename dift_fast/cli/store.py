"""``dift-fast store``: look into a feature store and export it (``extract ROOT --out STORE`` fills one)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from .common import declare_needs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="inspect a feature store or export it to HDF5",
                       description="Inspect a feature store made by 'dift-fast extract ROOT --out STORE', or export it.")
    actions = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="settings, image count, failures")
    info.add_argument("store")
    info.add_argument("--failures", action="store_true", help="list every failed image with its reason")
    info.set_defaults(func=run_info)
    h5 = actions.add_parser("export-h5", help="write an hloc-style HDF5 file (one group per image)")
    h5.add_argument("store")
    h5.add_argument("out", help="OUT.h5")
    h5.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists")
    h5.add_argument("--cell", default=None, metavar="T,BLOCK",
                    help="for a store grid (extract --timesteps/--blocks): the (t, block) cell to export, e.g. 261,1")
    h5.epilog = "Exit code 1 when damaged images (checksum mismatch) were left out; they are listed."
    h5.set_defaults(func=run_export_h5)
    declare_needs(h5, lambda args: [("colmap", "store export-h5", ("h5py",))])


def run_info(args: argparse.Namespace) -> int:
    from ..store import FeatureStore
    from ..store.grid import StoreGrid, is_store_grid

    store = StoreGrid.open(args.store) if is_store_grid(args.store) else FeatureStore.open(args.store)
    print(json.dumps(store.info(), indent=1, sort_keys=True))
    if args.failures:
        for name, reason in sorted(store.failures().items()):
            print(f"failed: {name}: {reason}")
    return 0


def run_export_h5(args: argparse.Namespace) -> int:
    from ..atomic import DISK_FULL_ERRNOS
    from ..grid import parse_cell
    from ..store import export_h5
    from ..store.cli import EXIT_DISK_FULL

    cell = parse_cell(args.cell) if args.cell is not None else None
    try:
        result = export_h5(args.store, args.out, overwrite=args.overwrite, cell=cell)
    except FileExistsError as err:
        raise ValueError(str(err)) from None
    except OSError as err:  # h5py's messages are long; say what happened and that nothing was left behind
        code = err.errno
        if code is None and (found := re.search(r"errno = (\d+)", str(err))):  # h5py puts it in the message
            code = int(found.group(1))
        reason = os.strerror(code) if code else str(err)
        print(f"dift-fast store: stopped: could not write {args.out} ({reason}); nothing was written", file=sys.stderr)
        return EXIT_DISK_FULL if code in DISK_FULL_ERRNOS else 2
    print(f"wrote {result.path}: {result.images} images")
    for reason in result.skipped.values():
        print(f"  skipped: {reason}", file=sys.stderr)
    if result.skipped:
        print(f"{len(result.skipped)} damaged image(s) left out of {result.path}", file=sys.stderr)
        return 1
    return 0
