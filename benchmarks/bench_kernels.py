"""Benchmark the native ensemble kernels against the torch ops they replace, and their share of the engine's time.

What the extractor calls, per micro-batch (``dift_fast/extractor.py``), and what each is timed against:

- ``ensemble_latents`` (``ops.ensemble_latents``): vs its pure-torch twin (the contract noise, numpy Philox: what
  runs without the kernels) and vs ``torch.randn`` ×2 + the arithmetic + the cast (same shapes; torch's own RNG,
  *not* the contract: only a yardstick);
- ``ensemble_mean`` (``ops.ensemble_reduce``, the mean over E alone): vs its twin and vs ``mean`` over E in torch.

Also timed, labelled as **not called by the extractor**: ``ensemble_reduce_normalized`` (the mean plus the L2
normalisation, channels-last) vs ``mean`` + ``F.normalize`` + ``permute(...).contiguous()``.

Reports the median time, the effective bandwidth (the bytes each op must move: inputs read once, outputs written
once) and, on a GPU, its fraction of the card's peak and of a measured device-to-device copy. The noise kernel
evaluates the contract's Box–Muller in float64 (log, sqrt, sin, cos) by design, so it is FP64-bound rather than
memory-bound: what matters is its share of the end-to-end time. Given the engine's time per image at the same
batch, ensemble size and image size (``--engine-ms-per-image``, or ``--engine-json`` from ``dift-fast bench
--out``), it reports the share of that time spent in noise + ensemble mean (goal on a GPU: < 1 %). Also checks the
answers: the latents kernel against its pure-torch twin (the contract noise), the reduce kernel against torch.

    python benchmarks/bench_kernels.py [--threads N]     # CPU: small sizes (< 1 min)
    python benchmarks/bench_kernels.py --device cuda     # GPU: B=16, E=8, 768² (latent 96², up_ft_index 1
                                                         # features 1280×48²), bf16
    python benchmarks/bench_kernels.py --device cuda --engine-json bench.json   # + share of the engine's time

Writes ``benchmarks/results/kernels-<device>.json`` and ``.md`` (or ``--out FILE.json`` and ``FILE.md``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, timed, write_results
from engine_time import engine_ms_from_json

from dift_fast import ops

# Published peak memory bandwidth (GB/s) by device-name fragment; --peak-gbs overrides.
PEAK_GBS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
            "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "L40S": 864, "A10G": 600}
SQRT_A, SQRT_1MA, SCALE = 0.80973, 0.58680, 0.18215

ENGINE_OPS = ("ensemble_latents", "ensemble_mean")  # what DiftExtractor.extract_prepared calls per micro-batch
REDUCE_NORMALIZED = "ensemble_reduce_normalized"  # timed for the record; the extractor does not call it

CONFIGS = {
    # B, E, latent side, feature channels, feature side
    "cpu": dict(batch=2, ensemble=4, latent=32, channels=320, feat=24),
    "cuda": dict(batch=16, ensemble=8, latent=96, channels=1280, feat=48),
}


def gpu_timed(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return times


def torch_latents(mean, std, e, out_dtype):
    b = mean.shape[0]
    eps1 = torch.randn((b, e, *mean.shape[1:]), device=mean.device)
    eps2 = torch.randn((b, e, *mean.shape[1:]), device=mean.device)
    z0 = (mean[:, None] + std[:, None] * eps1) * SCALE
    return (SQRT_A * z0 + SQRT_1MA * eps2).flatten(0, 1).to(out_dtype)


def torch_mean(feats, e):
    n, c, h, w = feats.shape
    return feats.reshape(n // e, e, c, h, w).float().mean(1)


def torch_reduce(feats, e):
    n, c, h, w = feats.shape
    mean = feats.reshape(n // e, e, c, h, w).float().mean(1)
    return mean, torch.nn.functional.normalize(mean, dim=1).permute(0, 2, 3, 1).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"], help="UNet backend dtype")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and the kernels")
    parser.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth of the GPU, GB/s")
    parser.add_argument("--engine-ms-per-image", type=float, default=None,
                        help="the engine's time per image (ms) at the same B, E and size: report the kernels' share")
    parser.add_argument("--engine-json", type=Path, default=None,
                        help="read the engine's time per image from a `dift-fast bench --out` JSON instead")
    parser.add_argument("--out", type=Path, default=None, help="write FILE.json and FILE.md here")
    for key in CONFIGS["cpu"]:
        parser.add_argument(f"--{key}", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # the CPU kernels use torch.get_num_threads() too
    cfg = {k: getattr(args, k) or v for k, v in CONFIGS[device.type].items()}
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    on_gpu = device.type == "cuda"
    repeats = args.repeats or (50 if on_gpu else 5)
    time_fn = (lambda fn: gpu_timed(fn, repeats)) if on_gpu else (lambda fn: timed(fn, repeats))
    status = ops.kernel_status()
    if not status["cuda" if on_gpu else "cpu"]["usable"]:
        raise SystemExit(f"native kernels not usable on {device}: {status}")

    b, e, s, c, f = cfg["batch"], cfg["ensemble"], cfg["latent"], cfg["channels"], cfg["feat"]
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(b, 4, s, s, generator=g).to(device)
    std = (torch.rand(b, 4, s, s, generator=g) * 0.1).to(device)
    keys = list(range(1, b + 1))
    feats = torch.randn(b * e, c, f, f, generator=g).to(device, dtype)
    item = torch.empty((), dtype=dtype).element_size()

    latents_bytes = 2 * mean.numel() * 4 + b * e * mean[0].numel() * item
    reduce_bytes = feats.numel() * item + 2 * b * c * f * f * 4
    mean_bytes = feats.numel() * item + b * c * f * f * 4
    runs = {
        ("ensemble_latents", "native"): (latents_bytes, lambda: ops.ensemble_latents(
            mean, std, keys, 0, e, SQRT_A, SQRT_1MA, SCALE, dtype, use_native=True)),
        ("ensemble_latents", "torch ops"): (latents_bytes, lambda: torch_latents(mean, std, e, dtype)),
        ("ensemble_mean", "native"): (mean_bytes, lambda: ops.ensemble_reduce(feats, e, use_native=True)),
        ("ensemble_mean", "torch ops"): (mean_bytes, lambda: torch_mean(feats, e)),
        (REDUCE_NORMALIZED, "native"): (reduce_bytes, lambda: ops.ensemble_reduce_normalized(
            feats, e, use_native=True)),
        (REDUCE_NORMALIZED, "torch ops"): (reduce_bytes, lambda: torch_reduce(feats, e)),
    }
    if not on_gpu:  # the pure-torch twins (numpy Philox for the noise): what the engine runs without the kernels
        runs[("ensemble_latents", "twin")] = (latents_bytes, lambda: ops.ensemble_latents(
            mean, std, keys, 0, e, SQRT_A, SQRT_1MA, SCALE, dtype, use_native=False))
        runs[("ensemble_mean", "twin")] = (mean_bytes, lambda: ops.ensemble_reduce(feats, e, use_native=False))
        runs[(REDUCE_NORMALIZED, "twin")] = (reduce_bytes, lambda: ops.ensemble_reduce_normalized(
            feats, e, use_native=False))
    peak = None
    copy_gbs = None
    if on_gpu:
        name = torch.cuda.get_device_name(device)
        peak = args.peak_gbs or next((v for k, v in PEAK_GBS.items() if k in name), None)
        big = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
        copy_gbs = 2 * big.numel() / median(gpu_timed(lambda: big.clone(), 20)) / 1e9

    rows = []
    for (op, impl), (nbytes, fn) in runs.items():
        t = median(time_fn(fn))
        row = {"op": op, "impl": impl, "median_ms": t * 1e3, "gbs": nbytes / t / 1e9, "bytes": nbytes}
        if peak:
            row["fraction_of_peak"] = row["gbs"] / peak
        if copy_gbs:
            row["fraction_of_copy"] = row["gbs"] / copy_gbs
        rows.append(row)
    for row in rows:
        row["called_by_extractor"] = row["op"] in ENGINE_OPS
    for op in (*ENGINE_OPS, REDUCE_NORMALIZED):
        native, base = (next(r for r in rows if r["op"] == op and r["impl"] == i) for i in ("native", "torch ops"))
        native["speedup_vs_torch"] = base["median_ms"] / native["median_ms"]
        twin = next((r for r in rows if r["op"] == op and r["impl"] == "twin"), None)
        if twin:
            native["speedup_vs_twin"] = twin["median_ms"] / native["median_ms"]

    # answers: the latents kernel is the twin exactly (the contract noise); the reduce kernel matches torch
    twin = ops.ensemble_latents(mean, std, keys, 0, e, SQRT_A, SQRT_1MA, SCALE, dtype, use_native=False)
    native = ops.ensemble_latents(mean, std, keys, 0, e, SQRT_A, SQRT_1MA, SCALE, dtype, use_native=True)
    _, n_native = ops.ensemble_reduce_normalized(feats, e, use_native=True)
    _, n_torch = torch_reduce(feats, e)
    checks = {
        "latents_equal_twin_fraction": (native == twin).float().mean().item(),
        "latents_max_abs_diff_vs_twin": (native.float() - twin.float()).abs().max().item(),
        "mean_max_abs_diff_vs_torch": (ops.ensemble_reduce(feats, e, use_native=True) - torch_mean(feats, e))
        .abs().max().item(),
        "reduce_normalized_max_abs_diff_vs_torch": (n_native - n_torch).abs().max().item(),
    }

    # the share of the engine's time per image: the extractor runs ensemble_latents and ensemble_mean per batch
    kernel_ms_per_image = sum(r["median_ms"] for r in rows if r["impl"] == "native" and r["op"] in ENGINE_OPS) / b
    engine_ms, engine_note = args.engine_ms_per_image, "given with --engine-ms-per-image"
    if engine_ms is None and args.engine_json is not None:
        engine_ms, engine_note = engine_ms_from_json(args.engine_json, b)
    elif engine_ms is None:
        engine_note = "no engine time given (--engine-ms-per-image or --engine-json)"
    share = {"kernels_ms_per_image": kernel_ms_per_image, "engine_ms_per_image": engine_ms,
             "fraction": kernel_ms_per_image / engine_ms if engine_ms else None, "note": engine_note,
             "goal": "< 1 % on a GPU"}

    dev_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    slug = "cpu" if not on_gpu else re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")
    header = (f"Device: {dev_name}; B={b}, E={e}, latent {s}², features {c}×{f}², backend dtype {args.dtype}; "
              f"median of {repeats}; threads {torch.get_num_threads()}"
              + (f"; peak {peak} GB/s, measured copy {copy_gbs:.0f} GB/s" if on_gpu else ""))
    cols = ("| op | called by the extractor | impl | median ms | GB/s | speed-up vs torch ops |"
            + (" % of peak | % of copy |" if on_gpu else " speed-up vs twin |"))
    lines = [header, "", cols, "|" + "---|" * (cols.count("|") - 1)]
    for r in rows:
        line = (f"| {r['op']} | {'yes' if r['called_by_extractor'] else 'no'} | {r['impl']} | {r['median_ms']:.3f} | "
                f"{r['gbs']:.2f} | "
                f"{r.get('speedup_vs_torch', float('nan')):.2f}× |".replace("nan×", "–"))
        if not on_gpu:
            line += f" {r['speedup_vs_twin']:.2f}× |" if "speedup_vs_twin" in r else " – |"
        else:
            frac = r.get("fraction_of_peak")
            line += f" {100 * frac:.0f} |" if frac else " – |"
            line += f" {100 * r['fraction_of_copy']:.0f} |"
        lines.append(line)
    lines += ["", "Answers: " + ", ".join(f"{k} = {v:.3g}" for k, v in checks.items())]
    if share["fraction"] is not None:
        lines += ["", f"Noise + ensemble mean: {kernel_ms_per_image:.4f} ms per image = "
                      f"{100 * share['fraction']:.2f} % of the engine's {engine_ms:.2f} ms per image "
                      f"({engine_note}; goal < 1 % on a GPU)"]
    else:
        lines += ["", f"Noise + ensemble mean: {kernel_ms_per_image:.4f} ms per image; share of the engine's time "
                      f"not computed: {engine_note}"]
    table = "\n".join(lines) + "\n"
    payload = {"machine": machine(), "device": dev_name, "config": cfg, "dtype": args.dtype, "repeats": repeats,
               "peak_gbs": peak, "copy_gbs": copy_gbs, "kernel_status": status, "rows": rows, "checks": checks,
               "share_of_engine": share}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
        path = args.out
    else:
        path = write_results(f"kernels-{slug}", payload, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
