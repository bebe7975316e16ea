"""``dift-fast extract``: features for images, into one feature file or (for a folder tree) a feature store."""

from __future__ import annotations

import argparse
import os
import sys

from ..grid import cell_name
from .common import add_model_options, load_extractor

FILE_SUFFIXES = (".safetensors",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract DIFT features of images",
        description=(
            "Extract DIFT features. With --out FILE.safetensors: the listed images into one file (features "
            "[B,C,h,w], config, original sizes). With --out STORE (a folder): every image under ROOT into a "
            "resumable, crash-safe feature store. With --timesteps and/or --blocks: every (t, block) cell of the "
            "grid from one network pass per image and t (a file holds one tensor per cell; a store becomes a "
            "folder of one store per cell, docs/store.md)."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES|ROOT", help="image files, or one folder (store mode)")
    p.add_argument("--out", required=True, help="FILE.safetensors, or a store folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    from .grid_options import add_grid_options

    add_grid_options(p)
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
    """Extract the listed images into one feature file; bad images are reported and skipped, the others written.

    An image is bad when it cannot be read (missing, not an image, corrupt, over PIL's decompression-bomb limit)
    or when its features are not finite (fp16 overflow): the same rule as store mode. With a grid of several
    (t, block) cells the file holds one tensor per cell, each with its feature identity.
    """
    from ..atomic import DISK_FULL_ERRNOS
    from ..grid import cell_label, grid_cells
    from ..identity import extractor_identity
    from ..images import ImageError, prepare_image
    from ..io import save_feature_grid, save_features
    from ..store.cli import EXIT_DISK_FULL
    from .grid_options import base_config, grid_from_args, load_grid_extractor

    grid = grid_from_args(args, base_config(args))
    extractor = load_grid_extractor(args, *grid) if grid else load_extractor(args)
    cells = grid_cells(*grid) if grid else [(extractor.config.t, extractor.config.up_ft_index)]
    prepared, failed = [], {}
    for name in args.inputs:
        try:
            prepared.append(prepare_image(name, extractor.config.image_size, name=name))
        except ImageError as err:
            failed[name] = err.reason
            print(f"skipped: {err}", file=sys.stderr)
    batch = _extract_finite(extractor, prepared, failed, cells, progress=not args.no_progress) if prepared else None
    if batch is None:
        print("dift-fast extract: error: no image could be extracted; nothing written", file=sys.stderr)
        return 1
    extra = {"failed": sorted(failed), "tiny_random": extractor.is_tiny}
    try:
        if len(cells) == 1:
            (t, k), = cells
            out = save_features(args.out, batch.features[(t, k)], batch.names, batch.original_sizes,
                                extractor.config.replace(t=t, up_ft_index=k), batch.image_keys, extra=extra,
                                identity=extractor_identity(extractor, t=t, block=k))
        else:
            out = save_feature_grid(args.out, batch.features, batch.names, batch.original_sizes, extractor.config,
                                    batch.image_keys, {(t, k): extractor_identity(extractor, t=t, block=k)
                                                       for t, k in cells}, extra=extra)
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        print(f"dift-fast extract: stopped: disk full while writing {args.out} ({os.strerror(err.errno)}); nothing "
              "was written: free some space and rerun", file=sys.stderr)
        return EXIT_DISK_FULL
    n = len(batch.names)
    if len(cells) == 1:
        _, c, h, w = batch.features[cells[0]].shape
        print(f"wrote {out}: {n} images, features [{n}, {c}, {h}, {w}] float32")
    else:
        print(f"wrote {out}: {n} images, {len(cells)} (t, block) cells, float32:")
        for (t, k), feats in batch.features.items():
            print(f"  features/{cell_name(t, k)}: {cell_label(t, k)}, {list(feats.shape)}")
    if extractor.is_tiny:
        print("note: model 'tiny-random' has random weights; these features are meaningless", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(args.inputs)} images failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _extract_finite(extractor, prepared, failed: dict[str, str], cells, progress: bool):  # -> GridFeatureBatch | None
    """Features of ``prepared`` at ``cells`` ((t, block) pairs), one micro-batch at a time; a micro-batch with
    non-finite features is redone image by image and only the images whose features are not finite fail (recorded
    in ``failed``)."""
    import torch

    from ..extractor import GridFeatureBatch, NonFiniteFeaturesError

    sizes: dict[tuple[int, ...], list] = {}
    for p in prepared:  # one network call needs one size (image_size=None keeps each image's own)
        sizes.setdefault(tuple(p.pixels.shape), []).append(p)
    if len(sizes) > 1:
        shown = sorted(f"{s[2]}x{s[1]}" for s in sizes)
        raise ValueError(f"the images have different sizes after preprocessing ({', '.join(shown)}); one feature "
                         "file holds one size: pass --image-size WxH, or use a folder and a store (--out STORE)")
    parts = []
    bs = extractor.config.batch_size
    chunks = [prepared[i:i + bs] for i in range(0, len(prepared), bs)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="dift-fast extract", unit="batch")
    for chunk in chunks:
        try:
            parts.append(_extract_cells(extractor, chunk, cells))
            continue
        except NonFiniteFeaturesError as err:
            if len(chunk) == 1:
                failed[chunk[0].name] = str(err)
                print(f"skipped: image {chunk[0].name}: {err}", file=sys.stderr)
                continue
        for p in chunk:  # find the culprits: image by image
            try:
                parts.append(_extract_cells(extractor, [p], cells))
            except NonFiniteFeaturesError as err:
                failed[p.name] = str(err)
                print(f"skipped: image {p.name}: {err}", file=sys.stderr)
    if not parts:
        return None
    return GridFeatureBatch({cell: torch.cat([b.features[cell] for b in parts]) for cell in parts[0].features},
                            [n for b in parts for n in b.names], [s for b in parts for s in b.original_sizes],
                            [k for b in parts for k in b.image_keys])


def _extract_cells(extractor, chunk, cells):  # -> GridFeatureBatch
    """``chunk``'s features at ``cells``: ``extract_prepared`` for the extractor's own cell, else one grid pass."""
    from ..extractor import GridFeatureBatch

    if cells == [(extractor.config.t, extractor.config.up_ft_index)]:
        fb = extractor.extract_prepared(chunk)
        return GridFeatureBatch({cells[0]: fb.features}, fb.names, fb.original_sizes, fb.image_keys)
    return extractor.extract_grid_prepared(chunk, cells=cells)
