"""Export the real SD 2.1 architecture (random weights) for block 1 and compare onnxruntime-CPU with torch-CPU.

Builds the UNet and VAE from the packaged ``sd21`` component configs (no weights are downloaded), exports
fp32 (external data) and fp16 graphs at a static 256x256, then times torch fp32 and onnxruntime (CPU EP) on one
latent / one image and reports the relative L2 error of each graph against torch fp32.

    python benchmarks/bench_export.py --out /tmp/dift-bench-export

Needs ~12 GB of RAM and several minutes on a small CPU. The graphs go under --out (not the repository); the figures
go to ``benchmarks/results/export-cpu-<size>.json`` and ``.md`` (what RESULTS.md quotes), and a copy to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build_components(configs: Path, up_ft_index: int):
    """Random-weight SD 2.1 components from the configs (no download); the text encoder is not needed here."""
    from common import random_components

    from dift_fast import DiftConfig

    comps = random_components(DiftConfig.from_preset("spair", model=str(configs), up_ft_index=up_ft_index))
    comps.text_encoder = comps.tokenizer = None
    gc.collect()
    return comps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(Path(__file__).resolve().parents[1] / "dift_fast" / "architectures" / "sd21"),
                    help="folder with the unet/, vae/, text_encoder/ and scheduler/ configs (default: the packaged sd21)")
    ap.add_argument("--out", default="/tmp/dift-bench-export", help="where graphs and results go (not the repo)")
    ap.add_argument("--size", type=int, default=256, help="image side (latent = size / 8)")
    ap.add_argument("--block", type=int, default=1, help="up_ft_index")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="fp32,fp16", help="graph dtypes to export and run")
    args = ap.parse_args()

    import onnxruntime as ort
    from dift_fast.export.graphs import export_onnx

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    res: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                             "platform": platform.platform()},
                 "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
                 "size": args.size, "block": args.block}
    t0 = time.perf_counter()
    comps = build_components(Path(args.configs), args.block)
    res["build_seconds"] = time.perf_counter() - t0
    res["unet_params_truncated"] = sum(p.numel() for p in comps.unet.parameters())
    g = torch.Generator().manual_seed(1)
    s = args.size
    x = torch.randn(1, 4, s // 8, s // 8, generator=g)
    t = torch.tensor([261])
    ctx = torch.randn(1, 77, comps.unet.config.cross_attention_dim, generator=g)
    img = torch.rand(1, 3, s, s, generator=g) * 2 - 1

    with torch.inference_mode():
        ref_feat = comps.unet(x, t, ctx).numpy()
        ref_mom = comps.vae.moments(img).numpy()
        res["torch_fp32"] = {
            "unet_s": median_time(lambda: comps.unet(x, t, ctx), args.repeats),
            "vae_s": median_time(lambda: comps.vae.moments(img), args.repeats),
        }
    print("torch fp32", res["torch_fp32"], flush=True)

    folders = {}
    for dtype in args.dtypes.split(","):
        t0 = time.perf_counter()
        folder, manifest = export_onnx(comps, out / f"sd21_block{args.block}_{dtype}_{s}", dtype=dtype,
                                       image_size=(s, s), force=True)
        folders[dtype] = folder
        res[f"export_{dtype}"] = {"seconds": time.perf_counter() - t0,
                                  "files": {k: v["size"] for k, v in manifest["files"].items()}}
        print(dtype, res[f"export_{dtype}"], flush=True)
        gc.collect()
    comps = None  # free the fp32 modules before the sessions load
    gc.collect()

    for dtype, folder in folders.items():
        npdt = np.float16 if dtype == "fp16" else np.float32
        entry = {}
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(folder / "unet.onnx"), providers=["CPUExecutionProvider"])
        entry["unet_session_s"] = time.perf_counter() - t0
        feeds = {"x_t": x.numpy().astype(npdt), "timestep": t.numpy(), "encoder_hidden_states": ctx.numpy().astype(npdt)}
        feat = sess.run(None, feeds)[0]
        entry["unet_rel_l2_vs_torch_fp32"] = rel_l2(feat, ref_feat)
        entry["unet_s"] = median_time(lambda: sess.run(None, feeds), args.repeats)  # noqa: B023
        sess = None
        gc.collect()
        sess = ort.InferenceSession(str(folder / "vae_encoder.onnx"), providers=["CPUExecutionProvider"])
        mom = sess.run(None, {"images": img.numpy().astype(npdt)})[0]
        entry["vae_rel_l2_vs_torch_fp32"] = rel_l2(mom, ref_mom)
        entry["vae_s"] = median_time(lambda: sess.run(None, {"images": img.numpy().astype(npdt)}), args.repeats)  # noqa: B023
        sess = None
        gc.collect()
        res[f"ort_cpu_{dtype}"] = entry
        print("ort", dtype, entry, flush=True)

    res["machine"] = {**res["machine"], **machine()}  # the CPU model name and cores, as every benchmark records them
    (out / "results.json").write_text(json.dumps(res, indent=2))
    lines = [f"SD 2.1 architecture (random weights), block {args.block}, {s}x{s}, batch 1, "
             f"{res['machine']['cpu']} ({res['machine']['threads']} threads), torch {torch.__version__}, "
             f"onnxruntime {ort.__version__}", "",
             "| run | UNet s | VAE s | UNet rel L2 vs torch fp32 | VAE rel L2 | graph files |",
             "|---|---|---|---|---|---|",
             f"| torch fp32 (eager) | {res['torch_fp32']['unet_s']:.2f} | {res['torch_fp32']['vae_s']:.2f} | - | - | - |"]
    for dtype in folders:
        e, files = res[f"ort_cpu_{dtype}"], res[f"export_{dtype}"]["files"]
        sizes = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(files.items()))
        lines.append(f"| onnxruntime CPU, {dtype} graph | {e['unet_s']:.2f} | {e['vae_s']:.2f} | "
                     f"{e['unet_rel_l2_vs_torch_fp32']:.1e} | {e['vae_rel_l2_vs_torch_fp32']:.1e} | {sizes} |")
    lines.append("")
    lines += [f"export {d}: {res[f'export_{d}']['seconds']:.0f} s" for d in folders]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {write_results(f'export-cpu-{s}', res, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
