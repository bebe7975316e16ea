"""DIFT_adm and CleanDIFT against DIFT_sd: time per image of each backbone's protocol, side by side in one run.

The paper's settings -- DIFT_sd at 768², E = 8 (block 1); DIFT_adm at 512², E = 8 (block 4); CleanDIFT at 768²,
E = 1 (block 1, no diffusion noise) -- on the real-size architectures with random weights (no download; the packaged
``sd21`` and ``adm256`` configs), every image side divided by the same ``--scale`` so the CPU finishes (the default
4: 192², 128², 192²). The three extractors run in one process, interleaved (A, B, C, A, B, C...), so a change in
the machine's load hits all three alike; times are quoted as ratios to DIFT_sd. The FLOPs each protocol needs per
image at the same sizes (``Backbone.costs``, counted on meta tensors) are reported beside them.

    .venv/bin/python benchmarks/bench_backbones.py                      # CPU, scale 4, 1 thread, 2 repeats
    .venv/bin/python benchmarks/bench_backbones.py --device cuda --scale 1 --dtype bf16   # not run on a GPU yet
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROTOCOLS = (  # (key, label, preset, full-size side)
    ("sd", "DIFT_sd (spair: block 1, E = 8)", "spair", 768),
    ("adm", "DIFT_adm (adm-spair: block 4, E = 8)", "adm-spair", 512),
    ("cleandift", "CleanDIFT (cleandift: block 1, E = 1, no noise)", "cleandift", 768),
)


def build(scale: int, device: str, dtype: str, images: int) -> dict:
    import torch
    from common import random_components

    from dift_fast import DiftConfig, DiftExtractor
    from dift_fast.architectures import architecture_dir
    from dift_fast.backbones.base import DiftComponents

    out = {}
    sd_components = None
    for key, label, preset, side in PROTOCOLS:
        size = side // scale
        model = "adm" if key == "adm" else str(architecture_dir("sd21"))
        config = DiftConfig.from_preset(preset, model=model, image_size=(size, size), device=device, dtype=dtype)
        if key == "cleandift" and sd_components is not None:
            # CleanDIFT is SD 2.1's architecture with other weights: the same random modules serve both (on the
            # CPU in fp32 the extractors share them; the speed does not depend on the values).
            from dift_fast.backbones.registry import backbone_for

            backbone = backbone_for(config)
            backbone.__dict__["source"] = sd_components.backbone.source
            comps = DiftComponents(
                backbone,
                config.up_ft_index,
                sd_components.network,
                sd_components.encoder,
                sd_components.text_encoder,
                sd_components.tokenizer,
            )
        else:
            comps = random_components(config)
            if key == "sd":
                sd_components = comps
        extractor = DiftExtractor(comps, config)
        pixels = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        costs = comps.backbone.costs((size, size), config.up_ft_index)
        out[key] = {
            "label": label,
            "preset": preset,
            "config": config,
            "extractor": extractor,
            "pixels": pixels,
            "flops_per_image": costs.per_image(config.ensemble_size),
        }
        gc.collect()
    return out


def render_table(payload: dict) -> str:
    runs, m = payload["runs"], payload["machine"]
    gpu = payload["device"].startswith("cuda")
    sizes = ", ".join(f"{r['size']}²" for r in runs.values())
    lines = [
        f"Backbones side by side: {payload['device']} ({m['gpu'] or m['cpu']}, {m['cores']} cores, "
        f"{payload['threads']} torch thread(s)), {payload['dtype']}, random weights, every side / {payload['scale']} "
        f"({sizes}), {payload['images']} image(s) per call, median of "
        f"{payload['repeats']}; load average {payload['load_before']} before, {payload['load_after']} after.",
        "",
        "| protocol | size (scaled) | E | time / image"
        + (" (s)" if gpu else " relative to DIFT_sd")
        + " | FLOPs / image relative to DIFT_sd |",
        "|---|---|---|---|---|",
    ]
    base = runs["sd"]
    for run in runs.values():
        t = run["median_s_per_image"]
        shown = f"{t:.3f}" if gpu else f"{t / base['median_s_per_image']:.2f}"
        lines.append(
            f"| {run['label']} | {run['size']}² (paper {run['paper_size']}²) | {run['ensemble_size']} | "
            f"{shown} | {run['flops_per_image'] / base['flops_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=4, help="divide every image side by this (default 4)")
    parser.add_argument("--images", type=int, default=1, help="images per call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    args = parser.parse_args()

    import torch
    from common import machine, median, write_results

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    load_before = round(os.getloadavg()[0], 2)
    runs = build(args.scale, args.device, args.dtype, args.images)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for key, run in runs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run["extractor"].extract(run["pixels"])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if repeat:
                times[key].append(time.perf_counter() - start)
            print(f"round {repeat} {key}: {time.perf_counter() - start:.2f} s", flush=True)
    load_after = round(os.getloadavg()[0], 2)
    payload = {
        "machine": machine(),
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "scale": args.scale,
        "images": args.images,
        "repeats": args.repeats,
        "load_before": load_before,
        "load_after": load_after,
        "model": "real-size SD 2.1 and ADM-256 architectures, random weights (packaged sd21 and adm256 configs)",
        "runs": {
            key: {
                "label": run["label"],
                "preset": run["preset"],
                "size": run["config"].image_size[0],
                "paper_size": run["config"].image_size[0] * args.scale,
                "ensemble_size": run["config"].ensemble_size,
                "block": run["config"].up_ft_index,
                "seconds_per_call": times[key],
                "median_s_per_image": median(times[key]) / args.images,
                "flops_per_image": run["flops_per_image"],
            }
            for key, run in runs.items()
        },
    }
    sd_time = payload["runs"]["sd"]["median_s_per_image"]
    payload["time_relative_to_sd"] = {k: r["median_s_per_image"] / sd_time for k, r in payload["runs"].items()}
    table = render_table(payload)
    name = f"backbones-{args.device.replace(':', '')}-scale{args.scale}"
    path = write_results(name, payload, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
