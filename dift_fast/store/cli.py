"""Store mode of ``dift-fast extract`` (``--out STORE``): options and runner.

Exit codes: 0 every image is in the store, 1 some images failed (listed, and in the store's failure log),
2 usage or configuration error (e.g. a store made with other settings), 3 the disk filled up (rerun to continue).
"""

from __future__ import annotations

import argparse
import sys

from ..cli.common import DeprecatedAlias

EXIT_FAILED_IMAGES = 1
EXIT_DISK_FULL = 3  # a command stopped by a full disk (file and store mode, store export-h5)
MAX_LISTED_FAILURES = 20


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Options that only store mode uses."""
    g = parser.add_argument_group("store mode (ROOT folder, or image files/globs -> STORE folder)")
    g.add_argument("--decode-workers", type=int, default=2, metavar="N",
                   help="threads decoding images ahead of the network, in every process (default 2; 0 decodes in "
                        "the main loop)")
    g.add_argument("--workers", dest="decode_workers", type=int, action=DeprecatedAlias, new="--decode-workers")
    g.add_argument("--devices", default=None,
                   help="comma-separated devices, one worker process per device on this machine, e.g. "
                        "cuda:0,cuda:1 (default: every GPU when several are visible and --device is not set)")
    g.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on a Ray cluster: 'local' starts one here, 'auto' or ray://host:port joins one")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="with --ray: Ray actors, one extractor each (default: GPUs in the cluster, or 2)")
    g.add_argument("--resume", action="store_true",
                   help="require an existing store and continue it (rerunning the same command continues anyway)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete an existing store first, also one made with other settings")
    g.add_argument("--dtype-store", choices=("fp16", "fp32"), default="fp16", help="stored precision (default fp16)")
    g.add_argument("--pca", type=int, default=None, metavar="DIM", help="keep DIM channels of a PCA fitted on a sample")
    g.add_argument("--pca-sample", type=int, default=64, metavar="N", help="images the PCA is fitted on (default 64)")
    g.add_argument("--no-fsync", action="store_true", help="do not flush each file to disk (faster; not power-safe)")


def _devices(args: argparse.Namespace) -> list[str] | None:
    if args.devices:
        return [d.strip() for d in args.devices.split(",") if d.strip()]
    if args.device is None and args.ray is None:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n > 1:
            return [f"cuda:{i}" for i in range(n)]
    return None


def job_from_args(args: argparse.Namespace):  # -> StoreJob
    from ..backend_options import backend_options_for
    from ..cli.common import backend_options_from_args, config_overrides, resolved_preset
    from ..cli.grid_options import grid_from_args
    from ..config import DiftConfig
    from ..grid import grid_cells, grid_config
    from .job import StoreJob

    overrides = config_overrides(args)
    overrides.pop("batch_size", None)  # store mode sizes batches itself (auto on CUDA) unless --batch-size is given
    config = DiftConfig.from_preset(resolved_preset(args), **overrides)
    grid = grid_from_args(args, config)
    if grid is not None:  # one store per (t, block) cell under --out, from one pass per image and t
        config = grid_config(config, *grid)
    return StoreJob(
        inputs=list(args.inputs), out=args.out, config=config, store_dtype=args.dtype_store, pca_dim=args.pca,
        pca_sample=args.pca_sample, overwrite=args.overwrite, resume=args.resume, decode_workers=args.decode_workers,
        batch_size=None if args.batch_size == "auto" else args.batch_size, devices=_devices(args), ray_address=args.ray, ray_workers=args.ray_workers,
        progress=not args.no_progress, fsync=not args.no_fsync,
        backend_options=backend_options_for(config.backend, backend_options_from_args(args)),
        cells=grid_cells(*grid) if grid is not None else None,
    )


def run_store_extract(args: argparse.Namespace) -> int:
    """``dift-fast extract ROOT --out STORE``: extract every image the store lacks; returns the exit code."""
    from .runner import extract_to_store
    from .store import StoreFullError

    if args.decode_workers < 0:
        raise ValueError(f"--decode-workers must be >= 0, got {args.decode_workers}")
    if args.pca is not None and args.pca < 1:
        raise ValueError(f"--pca must be >= 1, got {args.pca}")
    job = job_from_args(args)
    try:
        summary = extract_to_store(job)
    except StoreFullError as err:
        print(f"dift-fast extract: stopped: {err}", file=sys.stderr)
        return EXIT_DISK_FULL
    rate = summary.written / summary.seconds if summary.seconds > 0 else 0.0
    cells = f" ({len(job.cells)} (t, block) cells)" if job.cells is not None else ""
    print(f"store {summary.store.root}{cells}: {summary.total} images; {summary.skipped + summary.adopted} already stored, "
          f"{summary.written} written, {len(summary.failed)} failed ({summary.seconds:.1f} s, {rate:.2f} img/s)")
    if summary.times.images:
        print(f"  {summary.times.postfix()}, batch size {summary.batch_size}")
    if summary.failed:
        items = sorted(summary.failed.items())
        for name, reason in items[:MAX_LISTED_FAILURES]:
            print(f"  failed: {name}: {reason}", file=sys.stderr)
        if len(items) > MAX_LISTED_FAILURES:
            print(f"  ... {len(items) - MAX_LISTED_FAILURES} more in {summary.store.root}/failures/", file=sys.stderr)
        return EXIT_FAILED_IMAGES
    return 0
