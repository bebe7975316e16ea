"""``dift-fast index build|query``: a FAISS index over a feature file, and finding points of one image in it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import backend_options_from_args, declare_needs
from .match import parse_points


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build or query a FAISS index of a feature file or store",
        description="Index the images of a feature file (`dift-fast extract ... --out X.safetensors`) or a feature "
        "store (`dift-fast extract ROOT --out STORE`) and find points of an image in them.",
    )
    actions = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = actions.add_parser(
        "build",
        help="build an index from a feature file or a feature store",
        description="Image level (default): one pooled descriptor per image; points are then found by exact "
        "point transfer into the best images. Dense: every feature cell, labelled with its pixel centre. The "
        "index records its source and the features' identity.",
        epilog="Exit code 1 when damaged store images (checksum mismatch) were left out; they are listed.",
    )
    b.add_argument("features", metavar="FEATURES", nargs="?", default=None,
                   help="feature file written by dift-fast extract (or give --store)")
    b.add_argument("--store", default=None, metavar="STORE",
                   help="index a feature store instead (its images in name order; its PCA and precision)")
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
        help="find points of an image in the indexed images",
        description="Image-level index: retrieve the --top most similar images (best first), then transfer each "
        "point exactly (cosine argmax over the upsampled maps) into each of them. Dense index: the --top nearest "
        "feature cells per point. The image is one of the index's, or any image file: that one is extracted "
        "with the settings the index's features were made with (its feature identity), or refused when that "
        "is not possible here. --top k gives the first k rows of --top k+1 (ties: lower image id first).",
    )
    q.add_argument("index", metavar="INDEX", help="index file written by `dift-fast index build`")
    q.add_argument("--image", required=True,
                   help="an image of the index (its name or file name), or an image file to extract now")
    q.add_argument("--points", nargs="+", required=True, metavar="X,Y", help="pixel points in that image")
    q.add_argument("--top", type=int, default=10, help="images (image level) or cells (dense) per point")
    q.add_argument("--features", default=None, help="the feature file, if it moved since the index was built")
    q.add_argument("--store", default=None, metavar="STORE", help="the feature store, if it moved")
    q.add_argument("--include-self", action="store_true", help="also search the query image itself")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--device", default="auto", help="index device: auto, cpu, cuda, cuda:N or all")
    g = q.add_argument_group(
        "an image outside the index", "extracted with the index's recorded settings; these only say where the "
        "model is here (it must be the same model: its weights are compared by content)")
    g.add_argument("--model", default=None, help="the model the index's features were extracted with")
    g.add_argument("--revision", default=None, help="hub revision")
    g.add_argument("--unet-weights", default=None, metavar="FILE", help="SD/CleanDIFT: the UNet weights file")
    g.add_argument("--export-dir", default=None, metavar="DIR", help="onnxruntime/tensorrt: the export folder")
    g.add_argument("--no-build", action="store_true", help="onnxruntime/tensorrt: fail instead of exporting")
    q.set_defaults(func=run_query)
    declare_needs(q, _needs_faiss)


def _needs_faiss(args: argparse.Namespace) -> list:
    return [("faiss", f"index {args.index_command} (a FAISS index)", None)]


def run_build(args: argparse.Namespace) -> int:
    from ..index import FeatureIndex
    from ..index.sources import open_source

    source = open_source(args.features, args.store)
    n = len(source.names)
    if n == 0:
        raise ValueError(f"{source.kind} {source.path} holds no images")
    channels = {shape[0] for shape in source.shapes}
    if len(channels) != 1:
        raise ValueError(f"{source.kind} {source.path} holds maps of different widths {sorted(channels)}; one index "
                         "holds one descriptor size")
    (c,) = channels
    meta = {"source": source.describe(), "level": args.level, "names": source.names,
            "original_sizes": [list(s) for s in source.original_sizes], "identity": source.identity,
            "config": source.config, "tiny_random": source.tiny_random}
    if source.kind == "file":
        meta["features"] = meta["source"]["path"]  # what indexes built before "source" was recorded name
    index = FeatureIndex(c, args.kind, nlist=args.nlist, m=args.m, nprobe=args.nprobe, refine=args.refine,
                         refine_k_factor=args.refine_k_factor, device=args.device, meta=meta)
    skipped = _fill(index, source, args.level, args.kind)
    index.meta["skipped"] = sorted(skipped)
    out = index.save(args.out)
    kind = index.kind + (f" + {index.refine} refine (k factor {index.refine_k_factor:g})" if index.refine else "")
    print(f"wrote {out}: {index.ntotal} vectors ({args.level} level) of {n - len(skipped)} images from "
          f"{source.kind} {source.path}, {kind}, {index.bytes_per_vector} bytes/vector, on {index.device}")
    for name, reason in skipped.items():
        print(f"  skipped: {name}: {reason}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} damaged image(s) left out of {out}", file=sys.stderr)
        return 1
    return 0


TRAIN_SAMPLE = 100_000  # IVF-PQ training vectors, drawn at random (seed 0) from every vector to be indexed


def _fill(index, source, level: str, kind: str) -> dict[str, str]:
    """Train (IVF-PQ) and fill ``index`` from ``source``, reading each map once per pass; damaged ones are skipped."""
    import torch

    from ..index import pooled_descriptors
    from ..index.labels import cell_pixel_labels
    from ..store import StoreCorruptError

    skipped: dict[str, str] = {}

    def read(i: int):
        try:
            return source.features(i)
        except StoreCorruptError as err:
            skipped[source.names[i]] = str(err)
            return None

    gen = torch.Generator().manual_seed(0)
    if level == "image":
        rows = [(i, pooled_descriptors(f)) for i in range(len(source.names)) if (f := read(i)) is not None]
        if not rows:
            raise ValueError(f"no readable image in {source.kind} {source.path}")
        vectors, ids = torch.cat([v for _, v in rows]), torch.tensor([i for i, _ in rows])
        if kind == "ivfpq":
            index.train(vectors[torch.randperm(len(vectors), generator=gen)[:TRAIN_SAMPLE]])
        index.add(vectors, ids)
        return skipped
    counts = torch.tensor([h * w for _, h, w in source.shapes])
    if kind == "ivfpq":  # the sample is drawn over every cell, then read image by image (in the drawn order)
        offsets = torch.cumsum(counts, 0) - counts
        pick = torch.randperm(int(counts.sum()), generator=gen)[:TRAIN_SAMPLE]
        sample = torch.empty(len(pick), source.shapes[0][0])
        filled = torch.zeros(len(pick), dtype=torch.bool)  # rows of damaged images stay out of the sample
        for i in range(len(source.names)):
            hit = (pick >= offsets[i]) & (pick < offsets[i] + counts[i])
            if hit.any() and (f := read(i)) is not None:
                sample[hit] = f.flatten(1).T[pick[hit] - offsets[i]]
                filled |= hit
        index.train(sample[filled])
        skipped.clear()  # reported by the pass below
    for i in range(len(source.names)):
        if (f := read(i)) is not None:
            _, h, w = f.shape
            index.add(f.flatten(1).T, i, cell_pixel_labels(h, w, source.original_sizes[i]))
    if len(skipped) == len(source.names):
        raise ValueError(f"no readable image in {source.kind} {source.path}")
    return skipped


def _reopen_source(args: argparse.Namespace, index):  # -> FeatureSource
    """The index's feature file or store (moved: ``--features``/``--store``), checked to hold what was indexed."""
    from ..identity import describe_diff
    from ..index.sources import open_source

    recorded = index.meta.get("source") or {"kind": "file", "path": index.meta.get("features")}
    if args.features or args.store:
        source = open_source(args.features, args.store)
    elif not recorded.get("path"):
        raise ValueError(f"{args.index} does not name its feature file; pass --features FILE or --store STORE")
    elif recorded["kind"] == "store":
        source = open_source(store=recorded["path"])
    else:
        source = open_source(features=recorded["path"])
    where = f"{source.kind} {source.path}"
    if source.identity != index.meta.get("identity"):
        diff = describe_diff(index.meta.get("identity") or {}, source.identity or {}, old_name="index has",
                             new_name=f"{source.kind} has")
        raise ValueError(f"{where} holds other features than the index {args.index} was built from "
                         f"({diff or 'one of them records no feature identity'}); rebuild the index from it")
    if source.names != index.meta.get("names"):
        raise ValueError(f"{where} holds other images than the index was built from; rebuild the index")
    return source


def _extract_query(args: argparse.Namespace, index, source, path: Path):  # -> (features, size, tiny)
    """Extract an image that is not in the index with the settings its features were made with, or refuse."""
    from ..backend_options import backend_options_for
    from ..config import DiftConfig
    from ..extractor import DiftExtractor
    from ..identity import config_identity, describe_diff, extractor_identity
    from ..images import prepare_image
    from ..store.identity import feature_part

    recorded, identity = index.meta.get("config"), index.meta.get("identity")
    if not recorded or not identity:
        raise ValueError(f"{path} is not an image of the index, and {args.index} does not record the settings its "
                         "features were made with (built by an older dift-fast); rebuild the index to query images "
                         "outside it")
    config = DiftConfig.from_dict(recorded)
    config = config.replace(**{k: v for k in ("model", "revision", "unet_weights") if (v := getattr(args, k))})
    options = backend_options_for(config.backend, backend_options_from_args(args))
    wanted = feature_part(identity)

    def refuse(mine: dict, what: str) -> ValueError:
        diff = describe_diff(wanted, mine, old_name="index has", new_name=what)
        return ValueError(f"{path} cannot be extracted here as the index's features were ({diff}); run the query "
                          "where the index was built, or pass the model it was built with (--model, --unet-weights)")

    predicted = config_identity(config, backend_options=options)  # hashes the weights, loads no network
    if predicted != wanted:
        raise refuse(predicted, "this run would have")
    extractor = DiftExtractor.from_pretrained(config=config, backend_options=options)
    if (actual := extractor_identity(extractor)) != wanted:
        raise refuse(actual, "the loaded model has")
    batch = extractor.extract_prepared([prepare_image(path, config.image_size, name=str(path))])
    return source.encode(batch.features[0]), tuple(batch.original_sizes[0]), extractor.is_tiny


def run_query(args: argparse.Namespace) -> int:
    from ..index import FeatureIndex, find_points
    from ..matching import check_points, sample_descriptors

    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    index = FeatureIndex.load(args.index, device=args.device)
    source = _reopen_source(args, index)
    tiny = source.tiny_random
    try:
        qid = source.index_of(args.image)
    except KeyError as err:
        path = Path(args.image)
        if not path.is_file():
            raise ValueError(f"{err.args[0]}; and {args.image} is not an image file") from None
        points = check_points(parse_points(args.points), _image_size(path), f"--points for {args.image}")
        qid = None
        feat, size, tiny_query = _extract_query(args, index, source, path)
        tiny = tiny or tiny_query
    else:
        size = tuple(source.original_sizes[qid])
        points = check_points(parse_points(args.points), size, f"--points for {args.image}")
        feat = source.features(qid)
    exclude = None if args.include_self or qid is None else qid
    rows = []
    if index.meta.get("level") == "dense":
        own = 0 if exclude is None else source.shapes[qid][1] * source.shapes[qid][2]
        found = index.search(sample_descriptors(feat, points.float(), size, "aligned"),
                             min(index.ntotal, args.top + own))
        for i, (x, y) in enumerate(points.tolist()):
            keep = [j for j in range(found.image_ids.shape[1])
                    if found.image_ids[i, j] >= 0 and found.image_ids[i, j] != exclude]
            for rank, j in enumerate(keep[:args.top]):
                img = int(found.image_ids[i, j])
                rows.append({"point": [x, y], "rank": rank + 1, "image": source.names[img],
                             "x": int(found.xy[i, j, 0]), "y": int(found.xy[i, j, 1]),
                             "score": float(found.scores[i, j])})
    else:
        if exclude is not None and index.ntotal < 2:
            raise ValueError("the index holds only the query image; add images or pass --include-self")
        hits = find_points(index, feat, size, points, source.lookup(), top_images=args.top, exclude=exclude)
        for i, (x, y) in enumerate(points.tolist()):
            for j in range(len(hits.image_ids)):  # retrieval order: --top k is a prefix of --top k+1
                img = int(hits.image_ids[j])
                rows.append({"point": [x, y], "rank": j + 1, "image": source.names[img],
                             "x": int(hits.points[i, j, 0]), "y": int(hits.points[i, j, 1]),
                             "score": float(hits.scores[i, j]), "image_score": float(hits.image_scores[j])})
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(f"{'point':>11}  {'rank':>4}  {'x,y':>11}  {'cosine':>7}  image")
        for r in rows:
            print(f"{'{},{}'.format(*r['point']):>11}  {r['rank']:>4}  {'{},{}'.format(r['x'], r['y']):>11}  "
                  f"{r['score']:7.4f}  {r['image']}")
    if tiny:
        print("note: these features come from 'tiny-random' (random weights); the matches are meaningless",
              file=sys.stderr)
    return 0


def _image_size(path: Path) -> tuple[int, int]:
    from ..images import load_rgb

    return load_rgb(path).size  # a bad file fails here, before any model work
