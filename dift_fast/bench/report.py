"""The benchmark report: its JSON form (schema ``dift-fast-bench/2``), the terminal table, and the stability check.

JSON schema (one object; times in seconds, memory in bytes, FLOPs with a multiply-add counted as 2)::

    schema        "dift-fast-bench/2" (version 1 named per_image_s image_s and had SD-only cost names)
    created       UTC time, ISO 8601
    machine       cpu, cores, memory_gb, platform, gpu, gpu_memory_gb, gpu_count, driver, python, torch, cuda,
                  cudnn, onnxruntime, tensorrt, dift_fast, torch_threads, load_average (1, 5, 15 min, before the run)
    device        "cpu" or "cuda[:N]"
    warnings      other GPU processes, a busy CPU, or why they could not be checked
    model         what ran (model id/folder, or "<architecture> (architecture, random weights)")
    settings      every setting of the run (BenchSettings)
    config        the DiftConfig of the engine (batch_size, backend and dtype vary per record)
    baseline      description of the reference style, or null when it did not run
    costs         backbone ("sd", "adm", "cleandift"), encoder_flops_per_image (SD's VAE; 0 without an encoder),
                  network_flops_per_member (the truncated network), engine_flops_per_image (encoder once + E network
                  passes), reference_flops_per_image (E x (encoder + network)), network_parameters,
                  encoder_parameters, text_encoder_parameters (null: none); the text encoder's FLOPs are not counted
    max_cv        the stability limit on the coefficient of variation of the call times
    stable        every measured record's cv <= max_cv
    records       one per configuration:
      kind            "engine" or "baseline"
      backend, dtype, compile, batch_size   (batch_size null for a configuration skipped as a whole)
      status          "ok", "skipped" (cannot run here) or "failed" (broke while running)
      reason          why it was skipped or failed, else null
    and, when status is "ok":
      call_s          summary of the time per call (batch_size images): p50, p90, p99, mean, min, max, cv, values
      per_image_s     the same per image (call_s / batch_size)
      images_per_s    batch_size / call_s.p50
      stages_s        per stage (preprocess, encoder, noise, prompt, unet, reduce, copy_to_host): summary of the
                      time per call spent in it (on a GPU: between CUDA events on the stream)
      other_s         summary of call time minus the sum of the stages, per call
      memory          of the timed call whose memory rose most: peak_bytes (during it), before_bytes (just
                      before it), kind (what was measured)
      flops_per_image, achieved_flops_per_s (flops_per_image x images_per_s)
      peak_flops      {flops_per_s, label, source[, note]} of the device and dtype (GPU only), else null
      peak_share      achieved_flops_per_s / peak_flops.flops_per_s, or null
      cv, stable      coefficient of variation of call_s and whether it is <= max_cv
      baseline_ratio  images_per_s / the baseline's images_per_s (engine records when the baseline ran), else null
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..extractor import STAGES

__all__ = ["format_table", "instability", "write_json"]


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` to ``path`` atomically (:func:`dift_fast.atomic.write_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")


def instability(report: dict[str, Any]) -> list[str]:
    """One line per measured configuration whose call times vary more than ``max_cv`` (empty: stable)."""
    lines = []
    for r in report["records"]:
        if r["status"] != "ok" or r["stable"]:
            continue
        what = f"{r['kind']} {r['backend']} {r['dtype']} batch {r['batch_size']}"
        if r["cv"] is None:
            lines.append(f"{what}: one timed call cannot show that the timing is stable (use --iters 3 or more)")
        else:
            times = ", ".join(f"{v:.3g}" for v in r["call_s"]["values"])
            lines.append(f"{what}: call times vary with CV {r['cv']:.3f} > {report['max_cv']:.3f} (s: {times})")
    return lines


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:,.0f}"


def _flops(n: float | None, unit: str = "FLOP") -> str:
    if n is None:
        return "–"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def _label(r: dict[str, Any]) -> str:
    if r["kind"] == "baseline":
        return "reference style (fp32)"
    return f"{r['backend']} {r['dtype']}" + (" compiled" if r["compile"] else "")


def format_table(report: dict[str, Any]) -> str:
    """The report as text: the machine, the settings, one row per configuration, then the stage times."""
    m, cfg, costs = report["machine"], report["config"], report["costs"]
    gpu = f"{m['gpu']} ({m['gpu_memory_gb']} GB), driver {m['driver'] or '?'}, CUDA {m['cuda']}" if m["gpu"] else "none"
    load = ", ".join(f"{v:.2f}" for v in m["load_average"]) if m.get("load_average") else "?"
    w, h = cfg["image_size"]
    s = report["settings"]
    lines = [
        f"dift-fast bench: {report['model']}",
        f"device    {report['device']}; CPU {m['cpu']} ({m['cores']} cores, {m['memory_gb']} GB); GPU {gpu}",
        f"versions  dift-fast {m['dift_fast']}, torch {m['torch']}, python {m['python']}, onnxruntime "
        f"{m['onnxruntime'] or '–'}, tensorrt {m['tensorrt'] or '–'}; torch threads {m['torch_threads']}; "
        f"load average {load}",
        f"settings  preset {cfg['preset']}, {w}x{h}, E={cfg['ensemble_size']}, t={cfg['t']}, block "
        f"{cfg['up_ft_index']}, prompt {cfg['prompt']!r}, backends {','.join(s['backends'])}, dtypes "
        f"{','.join(d or 'default' for d in s['dtypes'])}, compile {s['compile']}, batch sizes "
        f"{','.join(map(str, s['batch_sizes']))}, warm-up {s['warmup']}, timed calls {s['iters']}, "
        f"max CV {report['max_cv']}",
        f"costs     encoder {_flops(costs['encoder_flops_per_image'])} per image, network "
        f"{_flops(costs['network_flops_per_member'])} per member; dift-fast {_flops(costs['engine_flops_per_image'])} per image, reference style "
        f"{_flops(costs['reference_flops_per_image'])}",
    ]
    if report["device"] == "cpu":
        lines.append("note      on the CPU the networks run image by image (batch-invariant features)")
    lines += [f"warning   {w}" for w in report["warnings"]]
    lines += [
        "",
        "| run | batch | call p50 ms | p90 | p99 | image p50 ms | images/s | peak memory MiB (+ during calls) "
        "| FLOP/s | % of peak | vs reference | CV |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    measured = []
    for r in report["records"]:
        if r["status"] != "ok":
            lines.append(f"| {_label(r)} | {r['batch_size'] or '–'} | {r['status']}: {r['reason']} |")
            continue
        measured.append(r)
        c, mem = r["call_s"], r["memory"]
        share = f"{r['peak_share'] * 100:.1f}" if r["peak_share"] is not None else "–"
        ratio = f"{r['baseline_ratio']:.2f}×" if r["baseline_ratio"] is not None else "–"
        cv = f"{r['cv']:.3f}" if r["cv"] is not None else "–"
        peak_mib, extra_mib = mem["peak_bytes"] / 2**20, (mem["peak_bytes"] - mem["before_bytes"]) / 2**20
        lines.append(
            f"| {_label(r)} | {r['batch_size']} | {_ms(c['p50'])} | {_ms(c['p90'])} | {_ms(c['p99'])} | "
            f"{_ms(r['per_image_s']['p50'])} | {r['images_per_s']:.3g} | {peak_mib:,.0f} (+{extra_mib:,.0f}) | "
            f"{_flops(r['achieved_flops_per_s'], 'FLOP/s')} | {share} | {ratio} | {cv}{'' if r['stable'] else ' (noisy)'} |"
        )
    if measured:
        names = [n for n in STAGES if any(n in r["stages_s"] for r in measured)]
        lines += [
            "",
            "Stage times, p50 ms per call:",
            "",
            "| run | batch | " + " | ".join(names) + " | other |",
            "|---|---|" + "---|" * (len(names) + 1),
        ]
        for r in measured:
            cells = [_ms(r["stages_s"][n]["p50"]) if n in r["stages_s"] else "–" for n in names]
            lines.append(
                f"| {_label(r)} | {r['batch_size']} | " + " | ".join(cells) + f" | {_ms(r['other_s']['p50'])} |"
            )
    return "\n".join(lines) + "\n"
