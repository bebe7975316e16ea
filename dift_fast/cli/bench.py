"""``dift-fast bench``: latency, throughput, stage times, memory and FLOP/s of the engine on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..architectures import ARCHITECTURES
from ..config import BACKENDS, DEFAULT_MODEL, DTYPES, PRESETS
from .common import Need, declare_needs, parse_size

DESCRIPTION = """\
Measure the engine on this machine: per batch size, the latency per call and per image (p50/p90/p99 over --iters
calls after --warmup), images/s, the time of each stage (preprocess, encoder, noise, prompt, UNet, reduce, copy to
host; CUDA events on a GPU, perf_counter on the CPU, one synchronisation per call), peak memory, and achieved FLOP/s
(on a GPU also as a share of the device's peak). --baseline also runs the reference style of DIFT (one image per
call, VAE on E copies, prompt encoded per call, fp32) in the same run and reports the speed-up.

--architecture sd21 (or adm256) builds SD 2.1 (or DIFT_adm) from the packaged configs with random weights: nothing
is downloaded, and the timings are those of the real model. The run is not reported when the call times vary by more than --max-cv
(coefficient of variation) unless --allow-noisy."""

EPILOG = """\
examples:
  dift-fast bench --architecture sd21 --device cuda --image-size 768x768 --ensemble-size 8 --dtype bf16 \\
      --batch-sizes 1,4,16 --baseline --out bench.json --plot bench.png
  dift-fast bench --model tiny-random --device cpu --image-size 64x64 --ensemble-size 2 --batch-sizes 1,2 --iters 3
  dift-fast bench --replot eager.json compiled.json --plot compare.png"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure latency, throughput, stage times and memory (optionally against the reference style)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to run").add_mutually_exclusive_group()
    what.add_argument(
        "--model",
        default=None,
        help=f"hub id, local diffusers folder, ADM checkpoint, tiny-random or tiny-random-adm (default {DEFAULT_MODEL})",
    )
    what.add_argument(
        "--architecture",
        default=None,
        metavar="NAME|DIR",
        help=f"{' or '.join(ARCHITECTURES)} (packaged), or a folder of SD 2.x component configs or of an ADM config.json: "
        "build the networks with random weights (no download)",
    )
    g = p.add_argument_group("configuration")
    g.add_argument("--revision", default=None, help="hub revision of --model")
    g.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="named settings (default: the backbone's, spair for SD, adm-spair for ADM)",
    )
    g.add_argument("--image-size", default=None, help="WxH, e.g. 768x768 (preset's by default)")
    g.add_argument("--ensemble-size", type=int, default=None, help="E, noise draws per image (preset's by default)")
    g.add_argument("--up-ft-index", type=int, default=None, help="feature block (preset's by default)")
    g.add_argument("--t", type=int, default=None, help="diffusion timestep (preset's by default)")
    g.add_argument("--prompt", default=None, help="text prompt (preset's by default: empty)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    g.add_argument(
        "--backend",
        default="torch",
        help=f"comma-separated, each one of {', '.join(BACKENDS)} (with every --dtype) or backend:dtype "
        "(with that dtype only), e.g. torch,torch:bf16,onnxruntime:fp32 (default torch)",
    )
    g.add_argument(
        "--dtype",
        default=None,
        help=f"comma-separated, each one of {', '.join(DTYPES)} (default fp32 on CPU, bf16 on CUDA)",
    )
    g.add_argument("--threads", type=int, default=None, help="CPU threads of torch and onnxruntime (default: theirs)")
    g.add_argument(
        "--compile", action="store_true", help="torch backend: torch.compile the networks (DiftConfig.compile)"
    )
    g.add_argument(
        "--engine", default=None, metavar="DIR", help="onnxruntime/tensorrt: export folder (dift-fast export)"
    )
    g.add_argument("--no-build", action="store_true", help="onnxruntime/tensorrt: fail instead of exporting")
    m = p.add_argument_group("measurement")
    m.add_argument("--batch-sizes", default="1,4,16", help="comma-separated images per call (default 1,4,16)")
    m.add_argument("--warmup", type=int, default=2, help="untimed calls per configuration first (default 2)")
    m.add_argument(
        "--iters", type=int, default=10, help="timed calls per configuration, in interleaved rounds (default 10)"
    )
    m.add_argument("--baseline", action="store_true", help="also run the reference style and report the speed-up")
    m.add_argument(
        "--max-cv",
        type=float,
        default=None,
        help="stability limit: largest coefficient of variation of the call times that is reported (default 0.10)",
    )
    m.add_argument("--allow-noisy", action="store_true", help="report even when a configuration is above --max-cv")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="FILE.json", help="write the report as JSON")
    o.add_argument("--plot", default=None, metavar="FILE.png", help="images/s and p50 latency vs batch size")
    o.add_argument(
        "--replot",
        nargs="+",
        default=None,
        metavar="FILE.json",
        help="run nothing: draw --plot from reports written by --out (one line per backend/precision)",
    )
    p.set_defaults(func=run)
    declare_needs(p, needs, backend=False)  # --backend is a list here: needs() reads it


def needs(args: argparse.Namespace) -> list[Need]:
    """The optional packages the options ask for: matplotlib for --plot, onnxruntime for an onnxruntime backend."""
    out: list[Need] = []
    if args.plot:
        out.append(("viz", "bench --plot (images/s and latency against batch size)", None))
    if not args.replot and any(item.strip().partition(":")[0] == "onnxruntime" for item in args.backend.split(",")):
        out.append(("onnx", "bench --backend onnxruntime", ("onnxruntime", "onnx")))
    return out


def run(args: argparse.Namespace) -> int:
    from ..bench import MAX_CV, BenchSettings, format_table, instability, run_benchmark, write_json
    from ..bench.runner import parse_backends, parse_batch_sizes, parse_list

    if args.replot:
        return _replot(args)
    settings = BenchSettings(
        model=args.model if args.model or args.architecture else DEFAULT_MODEL,
        architecture=args.architecture,
        revision=args.revision,
        preset=args.preset,
        backends=parse_backends(args.backend),
        dtypes=parse_list(args.dtype, DTYPES, "--dtype") if args.dtype else (None,),
        compile=args.compile,
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        warmup=args.warmup,
        iters=args.iters,
        baseline=args.baseline,
        device=args.device,
        image_size=parse_size(args.image_size) if args.image_size else None,
        ensemble_size=args.ensemble_size,
        up_ft_index=args.up_ft_index,
        t=args.t,
        prompt=args.prompt,
        engine_dir=args.engine,
        no_build=args.no_build,
        max_cv=MAX_CV if args.max_cv is None else args.max_cv,
        threads=args.threads,
    )
    report = run_benchmark(settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    problems = instability(report)
    if problems and not args.allow_noisy:
        print("dift-fast bench: not reporting: the timings were not stable enough to compare", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print(
            f"A configuration is reported when the coefficient of variation (std / mean) of its call times is at most "
            f"{settings.max_cv} (--max-cv): above that, other work competes for the device, and differences between "
            "configurations of that size are noise. Rerun on a quieter machine or with more --warmup/--iters, or "
            "pass --allow-noisy to report anyway (the records are marked noisy).",
            file=sys.stderr,
        )
        return 3
    print(format_table(report), end="")
    if args.out:
        print(f"wrote {write_json(report, args.out)}")
    if args.plot:
        from ..bench.plot import plot_reports

        print(f"wrote {plot_reports([report], args.plot)}")
    if not any(r["kind"] == "engine" and r["status"] == "ok" for r in report["records"]):
        print("dift-fast bench: no engine configuration could be measured (see the reasons above)", file=sys.stderr)
        return 1
    return 0


def _replot(args: argparse.Namespace) -> int:
    from ..bench import SCHEMA
    from ..bench.plot import PLOTTABLE_SCHEMAS, plot_reports

    if not args.plot:
        raise ValueError("--replot needs --plot FILE.png")
    reports = []
    for name in args.replot:
        try:
            report = json.loads(Path(name).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--replot {name}: cannot read a JSON report: {err}") from None
        if not isinstance(report, dict) or report.get("schema") not in PLOTTABLE_SCHEMAS:
            raise ValueError(f"--replot {name}: not a dift-fast bench report (schema {SCHEMA}); write one with --out")
        reports.append(report)
    print(f"wrote {plot_reports(reports, args.plot)}")
    return 0
