"""``dift-fast match A B --points x,y ...``: transfer points from image A to image B (spec §4)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import Need, add_model_options, declare_needs, load_extractor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="find where points of image A are in image B",
        description="Extract DIFT features of A and B and transfer each point of A to B by cosine argmax.",
    )
    p.add_argument("image_a", metavar="A", help="source image")
    p.add_argument("image_b", metavar="B", help="target image")
    p.add_argument("--points", nargs="+", required=True, metavar="X,Y", help="pixel points in A, e.g. 120,80 30,44")
    p.add_argument("--out", default=None, help="write a picture of the matches (PNG)")
    p.add_argument("--heatmap", action="store_true", help="with --out: shade B by the first point's cosine similarity")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (images, sizes, model, each point's match and cosine) instead of a table")
    add_model_options(p)
    p.set_defaults(func=run)
    declare_needs(p, needs)


def needs(args: argparse.Namespace) -> list[Need]:
    return [("viz", "match --out (a picture of the matches)", None)] if args.out else []


def parse_points(items: list[str]) -> list[tuple[int, int]]:
    """``X,Y`` strings -> pixel points (rounded); NaN, Inf and values beyond any image size are refused."""
    import math

    points = []
    for item in items:
        try:
            x, y = (float(v) for v in item.split(","))
        except ValueError:
            raise ValueError(f"--points {item!r}: expected X,Y pixel coordinates, e.g. 120,80") from None
        if not (math.isfinite(x) and math.isfinite(y)) or max(abs(x), abs(y)) >= 2**31:
            raise ValueError(f"--points {item!r}: coordinates must be finite pixel positions inside the image")
        points.append((round(x), round(y)))
    return points


def run(args: argparse.Namespace) -> int:
    import torch

    from ..images import load_rgb
    from ..matching import check_points, match_points
    from ..pair import extract_features

    points = parse_points(args.points)
    img_a, img_b = load_rgb(args.image_a), load_rgb(args.image_b)
    check_points(points, img_a.size, f"--points for {args.image_a}")  # fail before any model work
    extractor = load_extractor(args)
    a, b = extract_features(extractor, [img_a, img_b])  # ImageFeatures (one call per size: --image-size native)
    matched, scores = match_points(a, b, torch.tensor(points))
    if args.json:
        print(json.dumps(match_report(args, extractor, a, b, points, matched.tolist(), scores.tolist()), indent=1))
    else:
        print(f"{'A (x,y)':>12}  {'B (x,y)':>12}  cosine")
        for (xa, ya), (xb, yb), s in zip(points, matched.tolist(), scores.tolist()):
            print(f"{f'{xa},{ya}':>12}  {f'{xb},{yb}':>12}  {s:.4f}")
    if extractor.is_tiny:
        print("note: model 'tiny-random' has random weights; these matches are meaningless", file=sys.stderr)
    if args.out:
        from ..matching import cosine_maps
        from ..viz import plot_matches

        heatmap = cosine_maps(a, b, torch.tensor(points[:1]))[0] if args.heatmap else None
        plot_matches(img_a, img_b, points, matched.tolist(), args.out, scores=scores.tolist(), heatmap=heatmap,
                     names=(args.image_a, args.image_b), watermark=extractor.is_tiny)
        print(f"wrote {args.out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def match_report(args: argparse.Namespace, extractor, a, b, points, matched, scores) -> dict:
    """``match --json``: what was matched with what, and each point's match (pixels of the original images)."""
    return {
        "image_a": args.image_a,
        "image_b": args.image_b,
        "size_a": list(a.original_size),  # (width, height)
        "size_b": list(b.original_size),
        "model": extractor.config.model,
        "config": extractor.config.to_dict(),
        "tiny_random": bool(extractor.is_tiny),  # random weights: the matches are meaningless
        "matches": [{"a": list(pa), "b": list(pb), "cosine": s} for pa, pb, s in zip(points, matched, scores)],
    }
