"""``dift-fast extract``: features for images, into one feature file or (for a folder tree) a feature store."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_options, load_extractor

FILE_SUFFIXES = (".safetensors",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract DIFT features of images",
        description=(
            "Extract DIFT features. With --out FILE.safetensors: the listed images into one file (features "
            "[B,C,h,w], config, original sizes). With --out STORE (a folder): every image under ROOT into a "
            "resumable, crash-safe feature store."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES|ROOT", help="image files, or one folder (store mode)")
    p.add_argument("--out", required=True, help="FILE.safetensors, or a store folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    from ..store.cli import add_store_options

    add_store_options(p)
    p.set_defaults(func=run)


# Suffixes people reach for that are neither a feature file nor a store folder.
OTHER_FILE_SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".h5", ".hdf5", ".pkl", ".json")


def run(args: argparse.Namespace) -> int:
    if args.out.lower().endswith(OTHER_FILE_SUFFIXES):
        raise ValueError(
            f"--out {args.out}: feature files are written as .safetensors (e.g. feats.safetensors); for a feature "
            "store give a folder name (HDF5 comes from `dift-fast store export-h5`)"
        )
    if not args.out.endswith(FILE_SUFFIXES):
        from ..store.cli import run_store_extract

        return run_store_extract(args)
    return run_file_extract(args)


def run_file_extract(args: argparse.Namespace) -> int:
    """Extract the listed images into one feature file; bad images are reported and skipped."""
    from ..images import ImageError, prepare_image
    from ..io import save_features

    extractor = load_extractor(args)
    prepared, failed = [], []
    for name in args.inputs:
        try:
            prepared.append(prepare_image(name, extractor.config.image_size, name=name))
        except ImageError as err:
            failed.append(name)
            print(f"skipped: {err}", file=sys.stderr)
    if not prepared:
        print("dift-fast extract: error: no readable images; nothing written", file=sys.stderr)
        return 1
    batch = extractor.extract_prepared(prepared, progress=not args.no_progress)
    out = save_features(
        args.out,
        batch.features,
        batch.names,
        batch.original_sizes,
        extractor.config,
        batch.image_keys,
        extra={"failed": failed, "tiny_random": extractor.is_tiny},
    )
    c, h, w = batch.features.shape[1:]
    print(f"wrote {out}: {len(prepared)} images, features [{len(prepared)}, {c}, {h}, {w}] float32")
    if extractor.is_tiny:
        print("note: model 'tiny-random' has random weights; these features are meaningless", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(args.inputs)} images failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
