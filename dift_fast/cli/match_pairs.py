"""``dift-fast match-pairs``: hloc pairs file in, hloc ``features.h5`` + ``matches.h5`` out (docs/interop.md).

Exit codes: 0 every pair is in matches.h5, 1 some images failed (listed) and their pairs were skipped, 2 usage or
configuration error (a malformed pairs file, output files made with other settings, ...).
"""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_model_options,
    backend_options_from_args,
    config_overrides,
    declare_needs,
    load_extractor,
    resolved_preset,
)

MAX_LISTED_FAILURES = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match-pairs",
        help="match the pairs of an hloc pairs file into hloc's features.h5 and matches.h5",
        description=(
            "Extract each image named in PAIRS once (or read it from --store), write keypoints and DIFT descriptors "
            "to --features and mutual nearest-neighbour matches to --matches, both in hloc's HDF5 layout. "
            "Rerunning continues: images in --features and pairs in --matches are skipped."
        ),
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder the names in the pairs file are relative to")
    p.add_argument("--pairs", required=True, metavar="PAIRS.txt", help="hloc pairs file: 'name0 name1' per line")
    p.add_argument("--features", required=True, metavar="FEATURES.h5", help="hloc features file to create/continue")
    p.add_argument("--matches", required=True, metavar="MATCHES.h5", help="hloc matches file to create/continue")
    p.add_argument(
        "--keypoints",
        default="grid:cell",
        metavar="SPEC",
        help="grid:cell (centre of every feature cell, default), grid:STRIDE (every STRIDE pixels) or h5:PATH "
        "(keypoints of another hloc features file, e.g. SuperPoint's)",
    )
    p.add_argument("--store", default=None, metavar="STORE", help="read feature maps from this feature store")
    p.add_argument(
        "--convention",
        default="aligned",
        choices=("aligned", "reference"),
        help="descriptor sampling: aligned (pixel centres, default) or reference (the DIFT HPatches code)",
    )
    p.add_argument("--no-mutual", action="store_true", help="keep every nearest neighbour, not only mutual ones")
    p.add_argument("--min-score", type=float, default=None, help="drop matches with a lower cosine similarity")
    p.add_argument("--descriptor-dtype", default="fp16", choices=("fp16", "fp32"), help="stored descriptors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(p)
    p.set_defaults(func=run)
    declare_needs(p, lambda args: [("colmap", "match-pairs (hloc's HDF5 files)", ("h5py",))])


def run(args: argparse.Namespace) -> int:
    from ..backend_options import backend_options_for
    from ..config import DiftConfig
    from ..interop.match_pairs import match_pairs

    config = DiftConfig.from_preset(resolved_preset(args), **config_overrides(args))
    options = backend_options_from_args(args)
    summary = match_pairs(
        args.images,
        args.pairs,
        args.features,
        args.matches,
        config=config,
        extractor=lambda: load_extractor(args),
        backend_options=backend_options_for(config.backend, options) if options else None,
        keypoints=args.keypoints,
        store=args.store,
        convention=args.convention,
        mutual=not args.no_mutual,
        min_score=args.min_score,
        descriptor_dtype=args.descriptor_dtype,
        progress=not args.no_progress,
    )
    s = summary
    print(
        f"{args.features}: {s.images} images ({s.images_done_before} already there, {s.images_extracted} extracted, "
        f"{s.images_from_store} from the store, {len(s.failed)} failed)"
    )
    print(
        f"{args.matches}: {s.pairs} pairs ({s.pairs_done_before} already there, {s.pairs_matched} matched, "
        f"{s.pairs_skipped} skipped)"
    )
    if s.tiny_random:
        print(
            "note: model 'tiny-random' has random weights; these features and matches are meaningless", file=sys.stderr
        )
    for name, reason in list(s.failed.items())[:MAX_LISTED_FAILURES]:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    if len(s.failed) > MAX_LISTED_FAILURES:
        print(f"... and {len(s.failed) - MAX_LISTED_FAILURES} more failed images", file=sys.stderr)
    if not s.ok:
        print(
            f"{len(s.failed)} images failed and {s.pairs_skipped} pairs were skipped; fix them and rerun the same "
            "command to finish",
            file=sys.stderr,
        )
        return 1
    return 0
