"""``dift-fast eval``: the paper's benchmarks (and a synthetic end-to-end check) with cached features."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Need, add_model_options, declare_needs, load_extractor

BENCHMARKS = ("spair", "pf-willow", "hpatches", "davis", "jhmdb", "synthetic-homography")

EPILOG = """examples:
  dift-fast eval spair --root data/SPair-71k --limit 200
  dift-fast eval hpatches --root data/hpatches-sequences-release --keypoints data/superpoint-1k
  dift-fast eval davis --root data/DAVIS --out results/davis
  dift-fast eval jhmdb --root data/JHMDB --split data/JHMDB/testlist_split1.txt
  dift-fast eval synthetic-homography --model tiny-random --image-size 64x48 --limit 4
Each benchmark uses its protocol's preset for the model's backbone unless --preset is given (SD: spair,
hpatches, davis; a checkpoint file or tiny-random-adm: adm-spair, adm-hpatches, adm-davis; --preset cleandift
for CleanDIFT). Features are cached under --cache
(default OUT/cache): an interrupted run resumes. See docs/eval.md for the dataset layouts."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate on SPair-71k, PF-WILLOW, HPatches, DAVIS-2017, JHMDB or synthetic homographies",
        description="Score DIFT features with the paper's protocols; prints a table, writes JSON and markdown "
                    "with the paper's reported numbers beside the measured ones.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_benchmark_arguments(p)
    p.add_argument("--out", default=None, help="where results go (default eval-results/BENCHMARK)")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(p)
    p.set_defaults(func=run, preset=None)
    declare_needs(p, needs)


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark, its dataset and its options (shared with ``dift-fast sweep``)."""
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("--root", default=None,
                   help="dataset folder (required, except for synthetic-homography: a folder of your own photos)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N pairs (spair, pf-willow, synthetic), sequences (hpatches) or videos "
                        "(davis, jhmdb)")
    g = p.add_argument_group("benchmark options")
    g.add_argument("--keypoints", default=None,
                   help="hpatches: folder of <seq>-<k>.kp / .npy keypoint files (default: detect with SIFT)")
    g.add_argument("--short-side", type=int, default=480, help="davis, jhmdb: frames' short side (default 480)")
    g.add_argument("--split", default=None,
                   help="jhmdb: list of '<frames folder> <joint_positions.mat>' lines, or 1/2/3 for an official "
                        "split (default ROOT/testlist_split1.txt, else official split 1)")
    g.add_argument("--seed-pairs", type=int, default=0, help="synthetic-homography: seed of the pairs")


# Optional modules (all in the eval extra) each benchmark imports: OpenCV for homographies, SIFT and frame
# resizing, scikit-image for J&F's contour disks and the sample photos, scipy for JHMDB's .mat files.
BENCHMARK_MODULES = {
    "spair": (),
    "pf-willow": (),
    "hpatches": ("cv2",),
    "davis": ("cv2", "skimage"),
    "jhmdb": ("cv2", "scipy"),
    "synthetic-homography": ("cv2",),
}


def needs(args: argparse.Namespace) -> list[Need]:
    modules = BENCHMARK_MODULES[args.benchmark]
    if args.benchmark == "synthetic-homography" and args.root is None:
        modules += ("skimage",)  # its sample photos
    return [("eval", f"eval {args.benchmark}", modules)] if modules else []


def check_benchmark_arguments(args: argparse.Namespace) -> None:
    """Refuse a missing dataset folder or a bad --limit; pick the benchmark's protocol preset when none is given."""
    from ..backbones.catalog import default_preset_for_model, preset_card, protocol_preset

    bench = args.benchmark
    if args.root is None and bench != "synthetic-homography":
        raise ValueError(f"{bench} needs --root DIR (the dataset folder; see docs/eval.md for its layout)")
    if args.root is not None and not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root {args.root} is not a folder")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.preset is None:  # the benchmark's protocol for the backbone the model points to
        args.preset = protocol_preset(bench, preset_card(default_preset_for_model(args.model)).name)


def run(args: argparse.Namespace) -> int:
    from ..eval.features import FeatureCache
    from ..eval.report import format_table, write_report

    bench = args.benchmark
    check_benchmark_arguments(args)
    if bench == "synthetic-homography" and args.root is None:
        print("synthetic-homography: photos from scikit-image's sample data", file=sys.stderr)
    out = Path(args.out or Path("eval-results") / bench)
    extractor = load_extractor(args)
    cache = FeatureCache(args.cache or out / "cache", extractor)  # keyed by the feature identity
    progress = not args.no_progress
    report = run_benchmark(bench, args, extractor, cache, predictions_dir=out / "predictions", progress=progress)
    json_path, md_path = write_report(report, out)
    print(format_table(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


def run_benchmark(bench, args, extractor, cache, *, predictions_dir=None, progress=True):  # -> Report
    """Run benchmark ``bench``'s runner with the command line's options (shared with ``dift-fast sweep``)."""
    from ..eval import runners

    if bench == "spair":
        return runners.run_spair(extractor, args.root, cache, limit=args.limit, progress=progress)
    if bench == "pf-willow":
        return runners.run_pf_willow(extractor, args.root, cache, limit=args.limit, progress=progress)
    if bench == "hpatches":
        return runners.run_hpatches(extractor, args.root, cache, keypoints=args.keypoints, limit=args.limit,
                                    progress=progress)
    if bench == "davis":
        return runners.run_davis(extractor, args.root, cache, limit=args.limit, short_side=args.short_side,
                                 predictions_dir=predictions_dir, progress=progress)
    if bench == "jhmdb":
        return runners.run_jhmdb(extractor, args.root, cache, split=args.split, limit=args.limit,
                                 short_side=args.short_side, progress=progress)
    return runners.run_synthetic(extractor, cache, n_pairs=args.limit or 16, photos_dir=args.root,
                                 seed=args.seed_pairs, progress=progress)
