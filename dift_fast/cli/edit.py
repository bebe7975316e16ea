"""``dift-fast edit SOURCE EDIT.png TARGET... --out DIR``: carry an RGBA edit from one image onto others."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..atomic import atomic_path
from .common import add_model_options, declare_needs, load_extractor

EPILOG = """examples:
  dift-fast edit cat.jpg sticker.png cat_turned.jpg other_cat.jpg --out edited/
EDIT.png is drawn on SOURCE at SOURCE's size, transparent where nothing was drawn. Each target gets
DIR/<target name>_edit.png, or a message saying why it got none (too few RANSAC inliers: the edit's region was not
found there). The exit code is 1 when any target got no edit. See dift_fast.edit for the method."""


def register(sub: argparse._SubParsersAction) -> None:
    from ..edit import MIN_INLIER_FRACTION, MIN_INLIERS, N_POINTS, RANSAC_THRESHOLD

    p = sub.add_parser(
        "edit",
        help="propagate an RGBA edit drawn on one image onto other images",
        description="Sample points under the edit, find them in each target with DIFT point transfer, fit a "
                    "homography with RANSAC, warp the edit and composite it (DIFT's edit propagation demo).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="the image the edit was drawn on")
    p.add_argument("edit", metavar="EDIT.png", help="the edit: an RGBA image the size of SOURCE")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="images to carry the edit onto")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the edited targets (PNG)")
    g = p.add_argument_group("edit options")
    g.add_argument("--points", type=int, default=N_POINTS, help=f"points sampled under the edit (default {N_POINTS})")
    g.add_argument("--ransac-threshold", type=float, default=RANSAC_THRESHOLD,
                   help=f"RANSAC reprojection threshold in target pixels (default {RANSAC_THRESHOLD:g})")
    g.add_argument("--min-inliers", type=int, default=MIN_INLIERS,
                   help=f"fewer inliers than this: no output for that target (default {MIN_INLIERS})")
    g.add_argument("--min-inlier-fraction", type=float, default=MIN_INLIER_FRACTION,
                   help=f"... or fewer than this fraction of the points (default {MIN_INLIER_FRACTION:g})")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the point sampling (default 0)")
    add_model_options(p)
    p.set_defaults(func=run)
    declare_needs(p, lambda args: [("eval", "edit (RANSAC homographies, OpenCV)", ("cv2",))])


def output_names(targets: list[str]) -> list[str]:
    """``<stem>_edit.png`` per target; repeated stems get ``-2``, ``-3`` ... in order."""
    seen: dict[str, int] = {}
    names = []
    for t in targets:
        stem = Path(t).stem or "target"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}_edit.png" if seen[stem] == 1 else f"{stem}_edit-{seen[stem]}.png")
    return names


def run(args: argparse.Namespace) -> int:
    from ..edit import load_edit, transfer_edit
    from ..images import load_rgb

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    source = load_rgb(args.source)  # a bad source or edit fails here, before any model work
    edit = load_edit(args.edit, source.size, name=args.edit)
    extractor = load_extractor(args)
    results = transfer_edit(extractor, source, edit, args.targets, n_points=args.points,
                            ransac_threshold=args.ransac_threshold, min_inliers=args.min_inliers,
                            min_inlier_fraction=args.min_inlier_fraction, seed=args.sample_seed)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for target, name, result in zip(args.targets, output_names(args.targets), results):
        if result.image is None:
            failed += 1
            print(f"{target}: no edit: {result.reason}", file=sys.stderr)
            continue
        path = out / name
        with atomic_path(path) as tmp:
            result.image.save(tmp, format="PNG")
        print(f"{target} -> {path}  ({result.inliers}/{result.points} RANSAC inliers)")
    if extractor.is_tiny:
        print("note: model 'tiny-random' has random weights; the propagated edits are meaningless", file=sys.stderr)
    return 1 if failed else 0
