"""dift-fast's engine vs a straightforward reference-style DIFT on the real SD 2.1 architecture (random weights).

The reference style (Tang et al.'s code): one image per call, the VAE on E repeated copies, the prompt re-encoded
on every call, fp32. Both use the same truncated UNet (the reference also stops after the chosen block) and the
same weights. Each side runs in its own subprocess so its peak memory is its own.

    .venv/bin/python benchmarks/bench_engine.py                 # 256², E = 4, 2 images, CPU (issue 2's figures)
    .venv/bin/python benchmarks/bench_engine.py --size 768 --ensemble-size 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
SD21 = Path(__file__).resolve().parents[1] / "dift_fast" / "architectures" / "sd21"  # the packaged configs


def build_components(configs: Path, up_ft_index: int):
    """Random-weight SD 2.1 components built from the configs (no download), and the full VAE (the reference's)."""
    import torch
    from common import random_components
    from diffusers import AutoencoderKL

    from dift_fast import DiftConfig

    config = DiftConfig.from_preset("spair", model=str(configs), up_ft_index=up_ft_index)
    comps = random_components(config)
    torch.manual_seed(1)
    vae_full = AutoencoderKL.from_config(json.loads((configs / "vae" / "config.json").read_text())).eval()
    vae_full.encoder, vae_full.quant_conv = comps.encoder.encoder, comps.encoder.quant_conv  # the same weights
    return comps, vae_full


def reference_extract(comps, vae_full, images, config, prompt):
    """Reference-style DIFT, one image per call (what Tang et al.'s SDFeaturizer does)."""
    import torch

    a, b = comps.backbone.schedule.coefficients(config.t)
    E = config.ensemble_size
    out = []
    with torch.no_grad():
        for img in images:
            tok = comps.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            emb = comps.text_encoder(tok.input_ids)[0]  # re-encoded on every call
            x = img[None].repeat(E, 1, 1, 1)
            z0 = vae_full.encode(x).latent_dist.sample() * 0.18215  # the VAE on E copies
            zt = a * z0 + b * torch.randn_like(z0)
            feats = comps.unet(zt, config.t, emb.repeat(E, 1, 1))
            out.append(feats.mean(0))
    return torch.stack(out)


def child(mode: str, size: int, E: int, n: int, repeats: int, device: str) -> dict:
    import torch
    from common import median, peak_rss_delta, timed

    from dift_fast import DiftConfig, DiftExtractor

    comps, vae_full = build_components(SD21, 1)
    config = DiftConfig.from_preset(
        "spair", image_size=(size, size), ensemble_size=E, device=device, dtype="fp32", model=str(SD21)
    )
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompt = "a photo of a cat"
    if mode == "engine":
        del vae_full.decoder
        ext = DiftExtractor(comps, config)
        fn = lambda: ext.extract(images, prompt=prompt)  # noqa: E731
    else:
        vae_full.to(device)
        comps.unet.to(device)
        comps.text_encoder.to(device)
        fn = lambda: reference_extract(comps, vae_full, images.to(device), config, prompt)  # noqa: E731
    weights_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = peak_rss_delta(fn)  # first call: also the warm-up
    times = timed(fn, repeats=repeats, warmup=0)
    return {
        "mode": mode,
        "seconds_per_call": times,
        "median_s": median(times),
        "images_per_call": n,
        "peak_memory_mb": round(peak_mb),
        "peak_memory_kind": "above the loaded model: " + ("GPU max allocated" if device.startswith("cuda") else "RSS"),
        "model_load_peak_rss_mb": round(weights_mb),
    }


def render_table(payload: dict, images: int, repeats: int) -> str:
    """Markdown table; absolute times only on a GPU (CPU timings on a shared machine are quoted as ratios)."""
    m, runs, gpu = payload["machine"], payload["runs"], payload["device"].startswith("cuda")
    per_image = {k: v["median_s"] / v["images_per_call"] for k, v in runs.items()}
    time_col = "s / image" if gpu else "time / image (relative)"
    shown = per_image if gpu else {k: v / per_image["reference"] for k, v in per_image.items()}
    rows = [
        ("reference style (VAE on E copies, prompt per call, 1 image per call)", "reference"),
        ("dift-fast engine (VAE once, cached prompt)", "engine"),
    ]
    lines = [
        f"Engine vs reference-style DIFT, SD 2.1 architecture (random weights), {payload['size']}², "
        f"E = {payload['ensemble_size']}, fp32, {payload['device']} ({m['gpu'] or m['cpu']}, {m['cores']} cores), "
        f"{images} images per call, median of {repeats}.",
        "",
        f"| path | {time_col} | peak memory above the loaded model (MB) | speed-up |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        speedup = per_image["reference"] / per_image[key]
        lines.append(f"| {label} | {shown[key]:.2f} | {runs[key]['peak_memory_mb']} | {speedup:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ensemble-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.ensemble_size, args.images, args.repeats, args.device)))
        return

    from common import machine, write_results

    runs = {}
    for mode in ("reference", "engine"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--size",
            str(args.size),
            "--ensemble-size",
            str(args.ensemble_size),
            "--images",
            str(args.images),
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(mode, runs[mode], flush=True)
    ratio = runs["reference"]["median_s"] / runs["engine"]["median_s"]
    payload = {
        "machine": machine(),
        "size": args.size,
        "ensemble_size": args.ensemble_size,
        "device": args.device,
        "model": "SD 2.1 architecture, random weights (the packaged sd21 configs)",
        "runs": runs,
        "speedup": ratio,
    }
    table = render_table(payload, args.images, args.repeats)
    path = write_results(f"engine-{args.device.replace(':', '')}-{args.size}-E{args.ensemble_size}", payload, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
