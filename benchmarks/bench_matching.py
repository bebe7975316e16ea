"""Matching and retrieval benchmarks (issue 5).

1. ``transfer``: fast exact point transfer (``match_points``) against the straightforward one
   (``match_points_reference``) at SPair sizes: C = 1280, 48x48 feature maps, images about 500x375, 20 query
   points, CPU. Reports median times, the speed ratio, peak resident memory of each, and answer agreement.
2. ``ivfpq``: recall@10 of an IVF-PQ FeatureIndex against exact (flat) search on N (default 1M) 1280-d vectors
   with cluster structure, generated in chunks (never all in memory), with bytes per vector, build time and
   queries per second for several nprobe. With ``--refine``: one IVF-PQ index with an fp16 refine stage, searched
   plain (its IVF-PQ alone) and refined (shortlist re-ranked by float16 vectors) for each nprobe and k factor.

    python benchmarks/bench_matching.py transfer
    python benchmarks/bench_matching.py ivfpq --n 1000000      # ~10-20 min on 2 cores
    python benchmarks/bench_matching.py ivfpq --refine --threads 1   # plain and refined rows, one build

Results: JSON in benchmarks/results/, and a markdown table printed for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_delta, timed  # noqa: E402  (the benchmarks folder is not a package)


def peak_in_subprocess(method: str, threads: int) -> float | None:
    out = subprocess.run([sys.executable, __file__, "_peak", method, "--threads", str(threads)], check=True,
                         capture_output=True, text=True).stdout
    value = out.strip().splitlines()[-1]
    return None if value == "None" else float(value)


def transfer_pairs(points: int) -> list[tuple]:
    """Three SPair-sized pairs: smooth plus fine structure; the target a shifted, noisy copy of the source."""
    gen = torch.Generator().manual_seed(0)
    c, h, w = 1280, 48, 48
    pairs = []
    for src_size, tgt_size in [((500, 375), (500, 333)), ((375, 500), (500, 375)), ((500, 281), (431, 500))]:
        coarse = torch.randn(1, c, 6, 6, generator=gen)
        src = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
        src = src + 0.5 * torch.randn(c, h, w, generator=gen)
        tgt = torch.roll(src, (3, -5), dims=(1, 2)) + 0.5 * torch.randn(c, h, w, generator=gen)
        pts = torch.stack([torch.randint(0, src_size[0], (points,), generator=gen),
                           torch.randint(0, src_size[1], (points,), generator=gen)], 1)
        pairs.append((src, tgt, pts, src_size, tgt_size))
    return pairs


def bench_peak(args: argparse.Namespace) -> None:
    from dift_fast.matching import match_points, match_points_reference

    torch.set_num_threads(args.threads)
    src, tgt, pts, ss, ts = transfer_pairs(20)[0]
    fn = match_points_reference if args.method == "reference" else match_points
    print(peak_rss_delta(lambda: fn(src, tgt, pts, ss, ts)))


def bench_transfer(args: argparse.Namespace) -> dict:
    from dift_fast.matching import match_points, match_points_reference

    torch.set_num_threads(args.threads)
    c, h, w = 1280, 48, 48
    pairs = transfer_pairs(args.points)
    agree, max_diff, total = 0, 0.0, 0
    for src, tgt, pts, ss, ts in pairs:
        ref_xy, ref_cos = match_points_reference(src, tgt, pts, ss, ts)
        xy, cos = match_points(src, tgt, pts, ss, ts)
        agree += int((xy == ref_xy).all(1).sum())
        total += len(pts)
        max_diff = max(max_diff, float((cos - ref_cos).abs().max()))

    src, tgt, pts, ss, ts = pairs[0]
    t_ref = timed(lambda: match_points_reference(src, tgt, pts, ss, ts), args.ref_repeats)
    t_fast = timed(lambda: match_points(src, tgt, pts, ss, ts), args.fast_repeats, warmup=2)
    mem_ref, mem_fast = peak_in_subprocess("reference", args.threads), peak_in_subprocess("fast", args.threads)
    result = {
        "benchmark": "point_transfer", "machine": machine(), "channels": c, "feature_size": [h, w],
        "image_sizes": [[list(p[3]), list(p[4])] for p in pairs], "points_per_pair": args.points,
        "agreement": agree / total, "queries_compared": total, "max_abs_cosine_diff": max_diff,
        "reference_ms_median": 1000 * statistics.median(t_ref), "fast_ms_median": 1000 * statistics.median(t_fast),
        "reference_ms_all": [1000 * t for t in t_ref], "fast_ms_all": [1000 * t for t in t_fast],
        "speedup": statistics.median(t_ref) / statistics.median(t_fast),
        "reference_peak_mib": mem_ref, "fast_peak_mib": mem_fast,
    }
    print(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------------------------
# IVF-PQ recall against exact search on a large clustered set


class ClusteredVectors:
    """x = c_k + B·z + ε: 1280-d vectors around `clusters` centres, varying inside each along a shared 16-d
    subspace (low intrinsic dimension, like image features), plus isotropic noise. Chunk i is a pure function of
    (seed, i), so the set is generated twice (for adding and for ground truth) and never held in memory."""

    def __init__(self, dim: int = 1280, clusters: int = 1000, latent: int = 16, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.seed = dim, seed
        self.centres = torch.randn(clusters, dim, generator=gen)  # energy share ~0.5
        self.basis = torch.randn(latent, dim, generator=gen) * (0.8 / latent) ** 0.5  # energy share ~0.4

    def chunk(self, index: int, size: int) -> torch.Tensor:  # [size, dim] float32
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        k = torch.randint(0, len(self.centres), (size,), generator=gen)
        z = torch.randn(size, self.basis.shape[0], generator=gen)
        return self.centres[k] + z @ self.basis + 0.45 * torch.randn(size, self.dim, generator=gen)


def bench_ivfpq(args: argparse.Namespace) -> dict:
    import faiss

    from dift_fast.index import FeatureIndex

    faiss.omp_set_num_threads(args.threads)
    data = ClusteredVectors()
    n, chunk, nq = args.n, args.chunk, args.queries
    chunks = [(i, min(chunk, n - i * chunk)) for i in range((n + chunk - 1) // chunk)]
    queries = data.chunk(10**6, nq)  # fresh vectors from the same distribution, not stored
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    refine = "fp16" if args.refine else None
    index = FeatureIndex(data.dim, "ivfpq", nlist=args.nlist, m=args.m, nprobe=16, refine=refine,
                         refine_k_factor=args.k_factor[0], device="cpu")
    sample = data.chunk(10**6 + 1, args.train)
    t0 = time.perf_counter()
    index.train(sample)
    t_train = time.perf_counter() - t0
    log(f"trained nlist={index.nlist} m={index.m} on {len(sample)} vectors in {t_train:.1f} s")
    del sample

    # One pass: add each chunk to IVF-PQ and search it exactly (flat inner product on normalised vectors).
    qn = torch.nn.functional.normalize(queries, dim=1).numpy()
    best_s = torch.full((nq, 10), -float("inf"))
    best_i = torch.full((nq, 10), -1, dtype=torch.long)
    t_add = t_flat = t_gen = 0.0
    for ci, size in chunks:
        t0 = time.perf_counter()
        x = data.chunk(ci, size)
        t_gen += time.perf_counter() - t0
        start = ci * chunk
        ids = torch.arange(start, start + size)
        t0 = time.perf_counter()
        index.add(x, ids // 4096, torch.stack([ids % 4096 % 64, ids % 4096 // 64], 1))  # label: id = (img, x, y)
        t_add += time.perf_counter() - t0
        t0 = time.perf_counter()
        flat = faiss.IndexFlatIP(data.dim)
        flat.add(torch.nn.functional.normalize(x, dim=1).numpy())
        s, i = flat.search(qn, 10)
        t_flat += time.perf_counter() - t0
        s, i = torch.cat([best_s, torch.from_numpy(s)], 1), torch.cat([best_i, torch.from_numpy(i) + start], 1)
        best_s, pos = s.topk(10, dim=1)
        best_i = i.gather(1, pos)
        if ci % 5 == 0:
            log(f"chunk {ci + 1}/{len(chunks)}: add {t_add:.0f} s, flat {t_flat:.0f} s, generate {t_gen:.0f} s")
    truth = best_i  # [nq, 10] global ids
    truth_labels = (truth // 4096, truth % 4096 % 64, truth % 4096 // 64)

    want = truth_labels[0] * 4096 + truth_labels[2] * 64 + truth_labels[1]

    def plain_search(q: torch.Tensor) -> torch.Tensor:  # global ids of the refined index's IVF-PQ alone
        ivf = faiss.downcast_index(index._index.index).base_index  # sequential ids = global ids (added in order)
        _, i = ivf.search(torch.nn.functional.normalize(q, dim=1).numpy(), 10)
        return torch.from_numpy(i)

    def labelled_search(q: torch.Tensor) -> torch.Tensor:  # global ids from FeatureIndex's labels
        res = index.search(q, 10)
        return res.image_ids * 4096 + res.xy[..., 1] * 64 + res.xy[..., 0]

    # (refine, k factor, search): with --refine, the plain rows search the same trained IVF-PQ without re-ranking.
    modes = [(None, None, labelled_search)] if refine is None else (
        [(None, None, plain_search)] + [(refine, kf, labelled_search) for kf in args.k_factor])
    rows = []
    for nprobe in args.nprobe:
        faiss.extract_index_ivf(index._index).nprobe = nprobe
        index.nprobe = nprobe
        for mode, kf, fn in modes:
            if kf is not None:
                faiss.downcast_index(index._index.index).k_factor = kf
            fn(queries[:10])  # warm-up
            t0 = time.perf_counter()
            got = fn(queries)
            dt = time.perf_counter() - t0
            overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want)) / (10 * nq)
            nn_found = float((got == want[:, :1]).any(1).float().mean())
            rows.append({"nprobe": nprobe, "refine": mode, "k_factor": kf, "recall_10_at_10": overlap,
                         "recall_1_at_10": nn_found, "qps": nq / dt})
            log(f"nprobe {nprobe} refine {mode} k_factor {kf}: 10-recall@10 {overlap:.3f}, "
                f"1-recall@10 {nn_found:.3f}, {nq / dt:.0f} QPS")
    result = {
        "benchmark": "ivfpq_recall", "machine": machine(), "faiss": faiss.__version__, "faiss_threads":
        faiss.omp_get_max_threads(), "n": n, "dim": data.dim, "clusters": len(data.centres), "queries": nq,
        "nlist": index.nlist, "m": index.m, "nbits": index.nbits, "train_vectors": args.train,
        "ivfpq_bytes_per_vector": index.m * index.nbits // 8 + 8, "refine": refine,
        "index_bytes_per_vector": index.bytes_per_vector, "flat_bytes_per_vector": 4 * data.dim + 8,
        "train_s": t_train, "add_s": t_add, "build_s": t_train + t_add,
        "flat_search_s": t_flat, "flat_qps": nq / t_flat, "generate_s": t_gen, "nprobe_sweep": rows,
    }
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    t = sub.add_parser("transfer")
    t.add_argument("--points", type=int, default=20)
    t.add_argument("--ref-repeats", type=int, default=3)
    t.add_argument("--fast-repeats", type=int, default=15)
    t.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    t.add_argument("--out", default=None)
    pk = sub.add_parser("_peak", help=argparse.SUPPRESS)
    pk.add_argument("method", choices=("reference", "fast"))
    pk.add_argument("--threads", type=int, default=1)
    i = sub.add_parser("ivfpq")
    i.add_argument("--n", type=int, default=1_000_000)
    i.add_argument("--chunk", type=int, default=50_000)
    i.add_argument("--queries", type=int, default=1000)
    i.add_argument("--train", type=int, default=32_768)
    i.add_argument("--nlist", type=int, default=1024)
    i.add_argument("--m", type=int, default=64)
    i.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    i.add_argument("--refine", action="store_true", help="add an fp16 refine stage; report plain and refined")
    i.add_argument("--k-factor", type=float, nargs="+", default=[8.0],
                   help="refine shortlist factors to sweep (--refine; default 8)")
    i.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss OpenMP threads")
    i.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.which == "_peak":
        bench_peak(args)
        return
    result = bench_transfer(args) if args.which == "transfer" else bench_ivfpq(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.out or ("matching_transfer.json" if args.which == "transfer" else
                        "matching_ivfpq_refine.json" if args.refine else "matching_ivfpq.json")
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
