"""One-pass (t, block) grid against separate extractions: time and peak memory, side by side in one run.

A 4 x 3 grid (4 timesteps x 3 blocks) of the SD 2.1 architecture with random weights (the packaged ``sd21``
configs; no download), E = 8 as in the paper, at a small image size (default 128², so the CPU finishes):

- **grid**: ``extract_grid`` on an extractor loaded for the deepest block: the VAE once per image, the UNet once
  per (t, ensemble member) to the deepest block, every block from that pass;
- **separate**: the 12 cells one after another, each with ``extract`` on an extractor configured for that cell
  (the VAE once per cell, the UNet to that cell's block), as a grid search without ``extract_grid`` runs.

Both run in this process, interleaved (grid, separate, grid, separate, ...; the first round is the warm-up), so a
change in the machine's load hits both alike; the speed-up is the ratio of the medians. The UNet modules are shared
(the three truncated networks are views of one random UNet, fp32 on the CPU: no copies), so both paths compute the
same numbers, which is checked. Peak memory: each path once more in a fresh process (an allocator that already
holds freed memory hides a peak), the resident-set high-water mark above the level just before the extraction
(``common.peak_rss_delta``: Linux only). FLOP counts of both paths (meta tensors) are reported beside them.

    .venv/bin/python benchmarks/bench_grid.py                         # CPU, 128², E = 8, 1 thread, 2 repeats
    .venv/bin/python benchmarks/bench_grid.py --device cuda --size 768 --dtype bf16   # not run on a GPU yet
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TIMESTEPS = (0, 101, 261, 501)
BLOCKS = (1, 2, 3)


def build(size: int, ensemble_size: int, device: str, dtype: str) -> tuple[object, dict[int, object]]:
    """The grid extractor (network to the deepest block) and one extractor per block, all on one random UNet."""
    from common import random_components

    from dift_fast import DiftConfig, DiftExtractor
    from dift_fast.architectures import architecture_dir

    config = DiftConfig.from_preset(
        "spair",
        model=str(architecture_dir("sd21")),
        image_size=(size, size),
        ensemble_size=ensemble_size,
        device=device,
        dtype=dtype,
        up_ft_index=max(BLOCKS),
    )
    components = random_components(config, blocks=BLOCKS)  # one random UNet, truncated after each block
    grid = DiftExtractor(components[max(BLOCKS)], config)
    per_block = {k: DiftExtractor(components[k], config.replace(up_ft_index=k)) for k in BLOCKS}
    return grid, per_block


def run_grid(grid, pixels):
    return grid.extract_grid(pixels, timesteps=TIMESTEPS, blocks=BLOCKS)


def run_separate(per_block, pixels):
    out = {}
    for t in TIMESTEPS:
        for k in BLOCKS:
            extractor = per_block[k]
            extractor.config = extractor.config.replace(t=t)  # extract() runs at config.t (no rebuilt backend)
            out[(t, k)] = extractor.extract(pixels)
    return out


def noise_draw_seconds(grid, pixels, repeats: int) -> float:
    """Median time of one t's contract noise for the batch (``ops.ensemble_latents``, which the grid calls once per
    t: the normals are drawn again at each t rather than kept, which this shows to be negligible)."""
    import torch
    from common import median, timed

    from dift_fast import ops

    with torch.inference_mode():
        mean, std = grid.backend.encode(pixels)
        keys = [p.key for p in grid.prepare(pixels)]
        a, b = grid.schedule.coefficients(261)
        return median(
            timed(
                lambda: ops.ensemble_latents(
                    mean, std, keys, grid.config.seed, grid.config.ensemble_size, a, b, grid.geometry.scaling_factor
                ),
                max(repeats, 3),
            )
        )


def images(n: int, size: int):
    import torch

    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: the peak resident memory of one path, printed as JSON."""
    import torch
    from common import peak_rss_delta

    torch.set_num_threads(args.threads)
    grid, per_block = build(args.size, args.ensemble_size, args.device, args.dtype)
    pixels = images(args.images, args.size)
    fn = (lambda: run_grid(grid, pixels)) if args.memory == "grid" else (lambda: run_separate(per_block, pixels))
    print(json.dumps({"peak_mib": peak_rss_delta(fn)}))


def render_table(p: dict) -> str:
    m = p["machine"]
    grid_s, sep_s = p["grid"]["median_s"], p["separate"]["median_s"]
    gpu = p["device"].startswith("cuda")
    lines = [
        f"One-pass grid vs separate extractions: {p['device']} ({m['gpu'] or m['cpu']}, {m['cores']} cores, "
        f"{p['threads']} torch thread(s)), {p['dtype']}, SD 2.1 architecture with random weights, {p['size']}² "
        f"images, E = {p['ensemble_size']}, {p['images']} image(s); grid t = {list(p['timesteps'])} x blocks "
        f"{list(p['blocks'])} ({len(p['timesteps']) * len(p['blocks'])} cells); median of {p['repeats']} "
        f"interleaved rounds; load average {p['load_before']} before, {p['load_after']} after.",
        "",
        "| path | VAE passes / image | UNet passes / image | "
        + ("time (s)" if gpu else "time relative to grid")
        + " | peak memory relative to grid | FLOPs relative to grid |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("grid", "extract_grid (one pass per t)"), ("separate", "12 separate extract() calls")):
        r = p[key]
        time_cell = f"{r['median_s']:.2f}" if gpu else f"{r['median_s'] / grid_s:.2f}"
        mem = (
            f"{r['peak_mib'] / p['grid']['peak_mib']:.2f}"
            if r["peak_mib"] and p["grid"]["peak_mib"]
            else "not measured"
        )
        lines.append(
            f"| {label} | {r['vae_passes']} | {r['unet_passes']} | {time_cell} | {mem} | "
            f"{r['flops'] / p['grid']['flops']:.2f} |"
        )
    lines += [
        "",
        f"Speed-up of the grid: {sep_s / grid_s:.2f}x (measured), {p['separate']['flops'] / p['grid']['flops']:.2f}x "
        f"(FLOPs). Peak resident memory above the start, fresh process each: grid {p['grid']['peak_mib']:.0f} MiB, "
        f"separate {p['separate']['peak_mib']:.0f} MiB. Features of both paths bit-identical: "
        f"{p['bit_identical']}. The contract noise, drawn again at each t: {100 * p['noise_share_of_grid']:.3f} % "
        "of the grid's time.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="square image side (default 128)")
    parser.add_argument("--ensemble-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--memory", choices=("grid", "separate"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.memory:
        memory_child(args)
        return

    import torch
    from common import machine, median, write_results

    from dift_fast.architectures import architecture_dir
    from dift_fast.backbones.registry import backbone_for
    from dift_fast.config import DiftConfig

    torch.set_num_threads(args.threads)
    load_before = round(os.getloadavg()[0], 2)
    grid, per_block = build(args.size, args.ensemble_size, args.device, args.dtype)
    pixels = images(args.images, args.size)
    times = {"grid": [], "separate": []}
    same = None
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for key in times:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = run_grid(grid, pixels) if key == "grid" else run_separate(per_block, pixels)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if repeat:
                times[key].append(seconds)
            print(f"round {repeat} {key}: {seconds:.1f} s", flush=True)
            if key == "grid":
                grid_result = result
            else:
                same = all(torch.equal(grid_result[c], result[c]) for c in result)
    noise_s = noise_draw_seconds(grid, pixels, args.repeats)
    del grid, per_block
    peaks = {}
    for key in times:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory",
                key,
                "--size",
                str(args.size),
                "--ensemble-size",
                str(args.ensemble_size),
                "--images",
                str(args.images),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[key] = json.loads(child.stdout.strip().splitlines()[-1])["peak_mib"]
        print(f"peak memory {key}: {peaks[key]} MiB", flush=True)
    load_after = round(os.getloadavg()[0], 2)
    config = DiftConfig.from_preset("spair", model=str(architecture_dir("sd21")))
    backbone = backbone_for(config)
    costs = {k: backbone.costs((args.size, args.size), k) for k in BLOCKS}
    n_t, e = len(TIMESTEPS), args.ensemble_size
    flops = {
        "grid": costs[max(BLOCKS)].encoder_flops + n_t * e * costs[max(BLOCKS)].network_flops,
        "separate": sum(n_t * c.per_image(e) for c in costs.values()),
    }
    payload = {
        "machine": machine(),
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "ensemble_size": e,
        "images": args.images,
        "repeats": args.repeats,
        "timesteps": TIMESTEPS,
        "blocks": BLOCKS,
        "load_before": load_before,
        "load_after": load_after,
        "model": "real-size SD 2.1 architecture, random weights (packaged sd21 configs)",
        "bit_identical": same,
        "noise_draw_s_per_t": noise_s,
        "noise_share_of_grid": noise_s * len(TIMESTEPS) / median(times["grid"]),
        "grid": {
            "seconds": times["grid"],
            "median_s": median(times["grid"]),
            "peak_mib": peaks["grid"],
            "vae_passes": 1,
            "unet_passes": n_t * e,
            "flops": flops["grid"],
        },
        "separate": {
            "seconds": times["separate"],
            "median_s": median(times["separate"]),
            "peak_mib": peaks["separate"],
            "vae_passes": n_t * len(BLOCKS),
            "unet_passes": n_t * len(BLOCKS) * e,
            "flops": flops["separate"],
        },
    }
    payload["speedup"] = payload["separate"]["median_s"] / payload["grid"]["median_s"]
    payload["peak_memory_ratio"] = (peaks["grid"] / peaks["separate"]) if peaks["separate"] else None
    table = render_table(payload)
    path = write_results(f"grid-{args.device.replace(':', '')}-{args.size}-E{e}", payload, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
