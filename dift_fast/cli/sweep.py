"""``dift-fast sweep``: the paper's (t, block) grid search on one benchmark, from one network pass per image and t."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_options, declare_needs
from .eval import BENCHMARKS, add_benchmark_arguments, check_benchmark_arguments, needs, run_benchmark
from .grid_options import RANGE_HELP, add_grid_options, base_config, grid_from_args, load_grid_extractor

EPILOG = f"""examples:
  dift-fast sweep spair --root data/SPair-71k --timesteps 0:500:50 --blocks 0,1,2,3 --limit 500
  dift-fast sweep davis --root data/DAVIS --timesteps 0:200:25 --blocks 1,2,3
  dift-fast sweep synthetic-homography --model tiny-random --image-size 64x48 --timesteps 0,261 --blocks 0,1
--timesteps and --blocks: {RANGE_HELP}. Every cell's features come from one network pass per image and t (to the
deepest block), cached by feature identity under --cache; every scored cell is kept under OUT/cells, so a rerun,
or a rerun with a grown grid, computes and scores only the new cells. Writes OUT/sweep.csv, OUT/sweep.md and
OUT/sweep.png (the heat map; the best cell boxed). Benchmarks: {", ".join(BENCHMARKS)} (docs/eval.md)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="grid search over timesteps and blocks on a benchmark (table and heat map)",
        description="Score a benchmark at every (t, block) of a grid, as the paper's §3 picks t and the block per "
        "task, from one network pass per image and t.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_benchmark_arguments(p)
    p.add_argument("--out", default=None, help="where results go (default sweep-results/BENCHMARK)")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache; shareable with eval)")
    p.add_argument(
        "--metric",
        default=None,
        help="the metric cells are ranked by (default: spair 'PCK@0.1 per image', pf-willow 'PCK@0.10 "
        "per image', hpatches 'overall 3px', davis 'J&F-Mean', jhmdb 'PCK@0.1', "
        "synthetic-homography 'grid PCK@0.10')",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_grid_options(p)
    add_model_options(p)
    p.set_defaults(func=run, preset=None)
    declare_needs(p, needs)  # the benchmark's modules, as eval


def run(args: argparse.Namespace) -> int:
    from ..eval.sweep import PRIMARY_METRICS, run_sweep

    bench = args.benchmark
    check_benchmark_arguments(args)
    grid = grid_from_args(args, base_config(args))
    if grid is None:
        raise ValueError(
            "sweep needs --timesteps and/or --blocks (e.g. --timesteps 0:500:50 --blocks 0,1,2,3); the "
            "one left out is the preset's"
        )
    timesteps, blocks = grid
    out = Path(args.out or Path("sweep-results") / bench)
    extractor = load_grid_extractor(args, timesteps, blocks)
    progress = not args.no_progress

    first = [True]

    def run_cell(cell_extractor, cache):  # the first cell computes every cell's features: its bars show that
        shown, first[0] = progress and first[0], False
        return run_benchmark(bench, args, cell_extractor, cache, progress=shown)

    result = run_sweep(
        bench,
        extractor,
        timesteps,
        blocks,
        run_cell,
        out=out,
        cache_root=args.cache or out / "cache",
        options=_benchmark_options(args),
        metric=args.metric or PRIMARY_METRICS[bench],
        progress=progress,
    )
    print(Path(result.files["markdown"]).read_text(), end="")
    print(
        f"scored {len(result.scored)} of {len(result.scores)} cells in this run (the others were kept in "
        f"{out / 'cells'})"
    )
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


def _benchmark_options(args: argparse.Namespace) -> dict:
    """What a cell's score depends on besides its features: the dataset and the benchmark's options."""

    def resolved(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path is not None else None

    return {
        "root": resolved(args.root),
        "limit": args.limit,
        "keypoints": resolved(args.keypoints),
        "short_side": args.short_side,
        "split": args.split,
        "seed_pairs": args.seed_pairs,
    }
