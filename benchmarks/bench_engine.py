"""dift-fast's engine vs a straightforward reference-style DIFT on the real SD 2.1 architecture (random weights).

A thin script over ``dift_fast.bench`` (the timing code of ``dift-fast bench``): both sides run in one process and
one run, on the same random-weight networks built from the packaged SD 2.1 configs (or --architecture DIR), with
the same truncated UNet (the reference style also stops after the chosen block). The reference style is Tang et
al.'s: one image per call, the VAE on E repeated copies, the prompt re-encoded on every call, fp32. A side that
fails is recorded with its error and the other still runs. Writes ``results/<name>.json`` (the ``dift-fast bench``
report) and ``results/<name>.md``.

    python benchmarks/bench_engine.py                                   # CPU, 256², E = 4, 2 images per call
    python benchmarks/bench_engine.py --backend torch,onnxruntime       # + the engine on onnxruntime's CPU provider
    python benchmarks/bench_engine.py --device cuda --size 768 --ensemble-size 8 --images 16   # bf16 on CUDA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _per_image(record: dict[str, Any]) -> dict[str, Any]:
    """The per-image time summary of a record (schema 1, of the committed CPU results, named it ``image_s``)."""
    return record["per_image_s"] if "per_image_s" in record else record["image_s"]


def render_markdown(report: dict[str, Any]) -> str:
    """Ratio table; absolute times only on a GPU (CPU timings on a shared machine are quoted as ratios)."""
    m, cfg = report["machine"], report["config"]
    gpu = report["device"].startswith("cuda")
    ok = [r for r in report["records"] if r["status"] == "ok"]
    reference = next((r for r in ok if r["kind"] == "baseline"), None)
    unit = _per_image(reference)["p50"] if reference and not gpu else 1.0
    w, h = cfg["image_size"]
    load = m["load_average"][0] if m.get("load_average") else "?"
    lines = [
        f"Engine vs reference-style DIFT, {report['model']}, {w}×{h}, E = {cfg['ensemble_size']}, block "
        f"{cfg['up_ft_index']}, {report['device']} ({m['gpu'] or m['cpu']}, {m['cores']} cores, load average "
        f"{load} before the run), torch {m['torch']}, {m['torch_threads']} thread(s), "
        f"{report['settings']['warmup']} warm-up + {report['settings']['iters']} timed rounds (interleaved), p50; "
        f"stable (every CV ≤ {report['max_cv']}): {'yes' if report['stable'] else 'no'}.",
        "",
        f"| path | images per call | {'s / image' if gpu else 'time / image (relative)'} | images/s "
        "| peak memory above the loaded model (MiB) | speed-up | CV |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["records"]:
        if r["kind"] == "baseline":
            label = "reference style (VAE on E copies, prompt per call, fp32)"
        else:
            label = f"dift-fast engine, {r['backend']} {r['dtype']}" + (" compiled" if r["compile"] else "")
        if r["status"] != "ok":
            lines.append(f"| {label} | {r['batch_size'] or '–'} | {r['status']}: {r['reason']} | | | | |")
            continue
        per_image = _per_image(r)["p50"] / unit
        speedup = f"{r['baseline_ratio']:.2f}×" if r["baseline_ratio"] else ("1.00×" if r is reference else "–")
        above = (r["memory"]["peak_bytes"] - r["memory"]["before_bytes"]) / 2**20
        images_per_s = f"{r['images_per_s']:.3g}" if gpu else "–"
        lines.append(
            f"| {label} | {r['batch_size']} | {per_image:.3g} | {images_per_s} | {above:,.0f} | {speedup} | "
            f"{r['cv']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def rerender(paths: list[str]) -> None:
    """Rewrite the .md beside each results JSON from the JSON (after a change to the table)."""
    import json

    for name in paths:
        path = Path(name)
        path.with_suffix(".md").write_text(render_markdown(json.loads(path.read_text())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="square image side (default 256)")
    parser.add_argument("--ensemble-size", type=int, default=4, help="E (default 4)")
    parser.add_argument("--images", default="2", help="images per engine call, comma-separated (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", default=None, help="engine dtype (default fp32 on CPU, bf16 on CUDA)")
    parser.add_argument(
        "--backend", default="torch", help="comma-separated torch, onnxruntime, tensorrt, or backend:dtype (torch:bf16)"
    )
    parser.add_argument("--engine", default=None, metavar="DIR", help="onnxruntime/tensorrt: export folder")
    parser.add_argument(
        "--architecture",
        default="sd21",
        help="sd21 (default) or adm256 (the packaged configs), or a folder of component configs",
    )
    parser.add_argument("--prompt", default="a photo of a cat", help="prompt (the reference style encodes it per call)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--allow-noisy", action="store_true", help="write results even when a side's CV is too high")
    parser.add_argument(
        "--name", default=None, help="results file name (default engine-<device>-<size>-E<E>[-backend])"
    )
    parser.add_argument("--rerender", nargs="+", metavar="JSON", help="only rewrite the .md of these results")
    args = parser.parse_args()
    if args.rerender:
        rerender(args.rerender)
        return 0

    from common import write_results

    from dift_fast.bench import BenchSettings, format_table, instability, run_benchmark
    from dift_fast.bench.runner import parse_backends, parse_batch_sizes

    backends = parse_backends(args.backend)

    settings = BenchSettings(
        architecture=args.architecture,
        device=args.device,
        image_size=(args.size, args.size),
        ensemble_size=args.ensemble_size,
        prompt=args.prompt,
        backends=backends,
        dtypes=(args.dtype,),
        batch_sizes=parse_batch_sizes(args.images),
        warmup=args.warmup,
        iters=args.repeats,
        baseline=True,
        engine_dir=args.engine,
        threads=args.threads,
    )
    report = run_benchmark(settings, log=lambda message: print(message, flush=True))
    print(format_table(report))
    problems = instability(report)
    if problems and not args.allow_noisy:
        print("not writing results: the timings were not stable\n  " + "\n  ".join(problems), file=sys.stderr)
        return 3
    suffix = "" if backends == ("torch",) else "-" + "-".join(b.replace(":", "") for b in backends)
    name = args.name or f"engine-{args.device.replace(':', '')}-{args.size}-E{args.ensemble_size}{suffix}"
    table = render_markdown(report)
    path = write_results(name, report, table)
    print(table)
    print(f"wrote {path}")
    failed = [r for r in report["records"] if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
