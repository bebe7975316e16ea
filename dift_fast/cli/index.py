"""``dift-fast index build|query``: a FAISS index over a feature file, and finding points of one image in it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import declare_needs
from .match import parse_points


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build or query a FAISS index of a feature file",
        description="Index the images of a feature file (from `dift-fast extract ... --out X.safetensors`) and "
        "find points of one image in the others.",
    )
    actions = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = actions.add_parser(
        "build",
        help="build an index from a feature file",
        description="Image level (default): one pooled descriptor per image; points are then found by exact "
        "point transfer into the best images. Dense: every feature cell, labelled with its pixel centre.",
    )
    b.add_argument("features", metavar="FEATURES", help="feature file written by dift-fast extract")
    b.add_argument("--out", required=True, help="index file to write (written atomically)")
    b.add_argument("--type", dest="kind", default="flat", choices=("flat", "ivfpq"),
                   help="flat: exact; ivfpq: compressed, trained on a sample (default flat)")
    b.add_argument("--level", default="image", choices=("image", "dense"),
                   help="image: pooled descriptor per image (default); dense: every feature cell")
    b.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4·sqrt(training vectors))")
    b.add_argument("--m", type=int, default=None, help="PQ bytes per vector (default: dim/16 or the nearest valid)")
    b.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query (default 16)")
    b.add_argument("--refine", default=None, choices=("fp16",),
                   help="ivfpq only: also store float16 vectors (+2·dim bytes each) and re-rank the IVF-PQ "
                   "shortlist with them (higher recall; the index then runs on the CPU)")
    b.add_argument("--refine-k-factor", type=float, default=8.0,
                   help="with --refine: IVF-PQ candidates re-ranked per result (default 8)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or all (shard over all GPUs)")
    b.set_defaults(func=run_build)
    declare_needs(b, _needs_faiss)

    q = actions.add_parser(
        "query",
        help="find points of an indexed image in the other images",
        description="Image-level index: retrieve the --top most similar images, then transfer each point exactly "
        "(cosine argmax over the upsampled maps). Dense index: the --top nearest feature cells per point.",
    )
    q.add_argument("index", metavar="INDEX", help="index file written by `dift-fast index build`")
    q.add_argument("--image", required=True, help="an image of the feature file (its name or file name)")
    q.add_argument("--points", nargs="+", required=True, metavar="X,Y", help="pixel points in that image")
    q.add_argument("--top", type=int, default=10, help="images (image level) or cells (dense) per point")
    q.add_argument("--features", default=None, help="the feature file, if it moved since the index was built")
    q.add_argument("--include-self", action="store_true", help="also search the query image itself")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or all")
    q.set_defaults(func=run_query)
    declare_needs(q, _needs_faiss)


def _needs_faiss(args: argparse.Namespace) -> list:
    return [("faiss", f"index {args.index_command} (a FAISS index)", None)]


def run_build(args: argparse.Namespace) -> int:
    import torch

    from ..index import FeatureIndex, pooled_descriptors
    from ..index.labels import cell_pixel_labels
    from ..io import load_features

    ff = load_features(args.features)
    feats = ff.features
    b, c, h, w = feats.shape
    meta = {"features": str(Path(args.features).resolve()), "level": args.level, "names": ff.names,
            "original_sizes": [list(s) for s in ff.original_sizes], "identity": ff.identity}
    index = FeatureIndex(c, args.kind, nlist=args.nlist, m=args.m, nprobe=args.nprobe, refine=args.refine,
                         refine_k_factor=args.refine_k_factor, device=args.device, meta=meta)
    if args.level == "image":
        vectors, ids, xy = pooled_descriptors(feats), torch.arange(b), None
    else:
        vectors = feats.permute(0, 2, 3, 1).reshape(b * h * w, c)
        ids = torch.arange(b).repeat_interleave(h * w)
        xy = torch.cat([cell_pixel_labels(h, w, size) for size in ff.original_sizes])  # [b*h*w, 2]
    if args.kind == "ivfpq":
        pick = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))[:100_000]
        index.train(vectors[pick])
    index.add(vectors, ids, xy)
    out = index.save(args.out)
    kind = index.kind + (f" + {index.refine} refine (k factor {index.refine_k_factor:g})" if index.refine else "")
    print(f"wrote {out}: {index.ntotal} vectors ({args.level} level) of {b} images, {kind}, "
          f"{index.bytes_per_vector} bytes/vector, on {index.device}")
    return 0


def run_query(args: argparse.Namespace) -> int:
    import torch

    from ..index import FeatureIndex, find_points
    from ..io import load_features
    from ..matching import check_points, sample_descriptors

    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    index = FeatureIndex.load(args.index, device=args.device)
    features_path = args.features or index.meta.get("features")
    if not features_path:
        raise ValueError(f"{args.index} does not name its feature file; pass --features FILE")
    ff = load_features(features_path)
    if ff.identity != index.meta.get("identity"):
        from ..identity import describe_diff

        diff = describe_diff(index.meta.get("identity") or {}, ff.identity or {}, old_name="index has",
                             new_name="file has")
        raise ValueError(f"{features_path} holds other features than the index {args.index} was built from "
                         f"({diff or 'one of them records no feature identity'}); rebuild the index from it")
    if ff.names != index.meta.get("names"):
        raise ValueError(f"{features_path} holds other images than the index was built from; rebuild the index")
    try:
        qid = ff.index_of(args.image)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    size = tuple(ff.original_sizes[qid])
    points = check_points(parse_points(args.points), size, f"--points for {args.image}")
    feat = ff.features[qid]
    rows = []
    if index.meta.get("level") == "dense":
        found = index.search(sample_descriptors(feat, points.float(), size, "aligned"),
                             min(index.ntotal, args.top + (0 if args.include_self else feat[0].numel())))
        for i, (x, y) in enumerate(points.tolist()):
            keep = [j for j in range(found.image_ids.shape[1])
                    if found.image_ids[i, j] >= 0 and (args.include_self or found.image_ids[i, j] != qid)]
            for rank, j in enumerate(keep[:args.top]):
                img = int(found.image_ids[i, j])
                rows.append({"point": [x, y], "rank": rank + 1, "image": ff.names[img],
                             "x": int(found.xy[i, j, 0]), "y": int(found.xy[i, j, 1]),
                             "score": float(found.scores[i, j])})
    else:
        if not args.include_self and index.ntotal < 2:
            raise ValueError("the index holds only the query image; add images or pass --include-self")
        hits = find_points(index, feat, size, points, ff, top_images=args.top,
                           exclude=None if args.include_self else qid)
        for i, (x, y) in enumerate(points.tolist()):
            order = torch.argsort(hits.scores[i], descending=True, stable=True)
            for rank, j in enumerate(order.tolist()):
                img = int(hits.image_ids[j])
                rows.append({"point": [x, y], "rank": rank + 1, "image": ff.names[img],
                             "x": int(hits.points[i, j, 0]), "y": int(hits.points[i, j, 1]),
                             "score": float(hits.scores[i, j]), "image_score": float(hits.image_scores[j])})
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'point':>11}  {'rank':>4}  {'x,y':>11}  {'cosine':>7}  image")
    for r in rows:
        print(f"{'{},{}'.format(*r['point']):>11}  {r['rank']:>4}  {'{},{}'.format(r['x'], r['y']):>11}  "
              f"{r['score']:7.4f}  {r['image']}")
    if ff.extra.get("tiny_random"):
        print("note: these features come from 'tiny-random' (random weights); the matches are meaningless",
              file=sys.stderr)
    return 0
