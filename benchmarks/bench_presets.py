"""What each preset needs: CPU time and memory per image (measured here), GPU memory (estimated, not measured).

CPU (``--cpu``): every preset at its real size on the real-size architectures with random weights (the packaged
``sd21`` and ``adm256`` configs; random weights cost the same as real ones), one image each, fp32, presets one
after the other in one process, after one untimed call per preset at a small size (allocator and thread-pool
warm-up). Reported: seconds for the one image (the whole ``extract``: encoder, E noised network passes, mean) and
the peak resident memory above the level before the call, with the CPU, the torch threads and the load average.
On a shared machine these are an order of magnitude for planning, not a benchmark.

GPU memory (always; an estimate, **not measured on a GPU**): weights + activations + a CUDA allowance, where

- weights: the parameters DIFT keeps (network truncated after the feature block, the encoder) in the compute
  dtype (``--gpu-dtype``, default bf16, the CUDA default) plus the text encoder in fp32 (it stays fp32);
- activations: the peak of live tensor bytes during the largest network call (the encoder on one image; the
  network on the E noised samples of one image, what one micro-batch of ``batch_size=1`` runs), counted on meta
  tensors: every tensor an operation returns counts from its creation until it is freed, parameters excluded.
  Attention is counted as a fused kernel (only its output: flash / memory-efficient SDPA, what CUDA runs in bf16)
  and, as an upper bound, materialised (the softmax matrix, the math path). Each further image in a micro-batch
  adds the network's activations again;
- CUDA allowance: 1 GiB for the CUDA context, cuBLAS/cuDNN workspaces and allocator slack (an assumption).

    .venv/bin/python benchmarks/bench_presets.py                 # GPU memory estimate only (seconds)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_presets.py --cpu --threads 2   # + CPU time (~30 min here)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRESETS = ("spair", "hpatches", "davis", "cleandift", "adm-spair", "adm-hpatches", "adm-davis")
CUDA_ALLOWANCE_GIB = 1.0  # context + library workspaces + allocator slack: an assumption, see the docstring
GIB = 2**30


class LiveBytes:
    """Peak bytes of live tensors created inside the ``with`` block (a TorchDispatchMode over meta tensors)."""

    def __init__(self, exclude: list[Any]) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        self.excluded = {t.untyped_storage()._cdata for t in exclude}
        self.live: dict[int, list[int]] = {}  # storage -> [bytes, live tensors using it]
        self.current = self.peak = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    tracker.track(t)
                return out

        self.mode = Mode()

    def track(self, t: Any) -> None:
        import torch

        if not isinstance(t, torch.Tensor):
            return
        key = t.untyped_storage()._cdata
        if key in self.excluded:
            return
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __enter__(self) -> LiveBytes:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def _fused_attention(q, k, v, *args, **kwargs):  # what flash / memory-efficient SDPA keeps: its output
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def peak_activations(module: Any, inputs: tuple, fused_attention: bool, call: Any = None) -> int:
    """Peak live activation bytes of ``(call or module)(*inputs)`` on meta tensors, ``module``'s parameters and
    buffers excluded (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    real_sdpa = F.scaled_dot_product_attention
    if fused_attention:
        F.scaled_dot_product_attention = _fused_attention
    try:
        with torch.no_grad(), LiveBytes(list(module.parameters()) + list(module.buffers())) as live:
            for t in inputs:
                live.track(t)
            out = (call or module)(*inputs)
            del out
        return live.peak
    finally:
        F.scaled_dot_product_attention = real_sdpa


def meta_networks(config: Any, dtype: Any) -> tuple[Any, Any, int]:
    """(encoder or None, truncated network, text encoder parameters) of ``config`` on the meta device in ``dtype``."""
    import json

    import torch

    from dift_fast.architectures import architecture_dir

    if config.backbone == "adm":
        from dift_fast.backbones.adm import adm_config, build_adm_unet
        from dift_fast.backbones.adm_network import TruncatedADM

        net = TruncatedADM(build_adm_unet(adm_config(), device="meta"), config.up_ft_index).to(dtype)
        return None, net, 0
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dift_fast.unet import TruncatedUNet, VaeEncoder

    folder = architecture_dir("sd21")

    def read(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text())

    with torch.device("meta"):
        net = TruncatedUNet(UNet2DConditionModel.from_config(read("unet")), config.up_ft_index).to(dtype)
        enc = VaeEncoder(AutoencoderKL.from_config(read("vae"))).to(dtype)
        text_cfg = {k: v for k, v in read("text_encoder").items() if k != "architectures"}
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    return enc, net, sum(p.numel() for p in text.parameters())


def gpu_estimate(preset: str, dtype_name: str) -> dict[str, Any]:
    import torch

    from dift_fast import DiftConfig
    from dift_fast.flops import count_parameters

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    config = DiftConfig.from_preset(preset)
    w, h = config.image_size
    E = config.ensemble_size
    enc, net, text_params = meta_networks(config, dtype)
    size = torch.finfo(dtype).bits // 8
    weights = (count_parameters(net) + (count_parameters(enc) if enc is not None else 0)) * size + text_params * 4
    with torch.device("meta"):
        if enc is not None:
            image = torch.zeros(1, 3, h, w, dtype=dtype)
            f = enc.downsample_factor
            latents = torch.zeros(E, enc.latent_channels, h // f, w // f, dtype=dtype)
            context = torch.zeros(E, 77, net.config.cross_attention_dim, dtype=dtype)
            net_inputs = (latents, torch.tensor([config.t]), context)
        else:
            net_inputs = (torch.zeros(E, 3, h, w, dtype=dtype), torch.tensor([config.t]))
    peaks = {}
    for fused in (True, False):
        network = peak_activations(net, net_inputs, fused)
        encoder = peak_activations(enc, (image,), fused, call=enc.moments) if enc is not None else 0
        peaks["fused" if fused else "materialised"] = {"network": network, "encoder": encoder}
    gc.collect()

    def total(kind: str) -> float:
        p = peaks[kind]
        return (weights + max(p["network"], p["encoder"])) / GIB + CUDA_ALLOWANCE_GIB

    return {
        "preset": preset,
        "image_size": [w, h],
        "ensemble_size": E,
        "block": config.up_ft_index,
        "dtype": dtype_name,
        "weights_gib": weights / GIB,
        "activations_gib": {k: {n: b / GIB for n, b in v.items()} for k, v in peaks.items()},
        "per_extra_image_gib": peaks["fused"]["network"] / GIB,
        "total_gib_fused_attention": total("fused"),
        "total_gib_materialised_attention": total("materialised"),
    }


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def cpu_time(preset: str, threads: int) -> dict[str, Any]:
    import torch
    from common import peak_rss_delta, random_components

    # Refuse what would not fit (a shared machine: never push others into swap or the OOM killer): fp32 weights +
    # the fused-attention activation peak, with a 30 % margin (CPU attention is flash-style for fp32 in torch).
    fp32 = gpu_estimate(preset, "fp32")
    need = 1.3 * (fp32["weights_gib"] + max(fp32["activations_gib"]["fused"].values()))
    if need > available_gib():
        return {"preset": preset, "skipped": f"needs ~{need:.1f} GiB, {available_gib():.1f} GiB available"}

    from dift_fast import DiftConfig, DiftExtractor
    from dift_fast.architectures import architecture_dir

    model = "adm" if preset.startswith("adm") else str(architecture_dir("sd21"))
    config = DiftConfig.from_preset(preset, model=model, device="cpu", dtype="fp32")
    extractor = DiftExtractor(random_components(config), config)
    w, h = config.image_size
    m = 32 if config.backbone == "adm" else 8
    extractor.extract(torch.rand(1, 3, 2 * m, 2 * m) * 2 - 1)  # warm-up at a small size (prompt cached)
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    load_before = os.getloadavg()[0]
    times: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        extractor.extract(image)
        times.append(time.perf_counter() - start)

    rss = peak_rss_delta(run)
    result = {
        "preset": preset,
        "image_size": [w, h],
        "ensemble_size": config.ensemble_size,
        "block": config.up_ft_index,
        "seconds": times[0],
        "minutes": times[0] / 60,
        "peak_rss_above_start_gib": None if rss is None else rss / 1024,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "threads": threads,
    }
    return result


def render_table(payload: dict) -> str:
    m = payload["machine"]
    gpu = {r["preset"]: r for r in payload["gpu_estimate"]}
    cpu = {r["preset"]: r for r in payload.get("cpu", [])}
    lines = [
        f"Hardware per preset, one image (batch 1). GPU memory: **estimate, not measured on a GPU** "
        f"({payload['gpu_dtype']} networks, fp32 text encoder, attention fused; materialised attention in brackets; "
        f"+{CUDA_ALLOWANCE_GIB:g} GiB CUDA allowance).",
    ]
    ran = [r for r in cpu.values() if "skipped" not in r]
    if ran:
        first = ran[0]
        lines.append(
            f"CPU: measured on {m['cpu']} ({m['cores']} cores, {first['threads']} torch threads, fp32, random "
            f"weights of the real-size architectures), load average {min(r['load_before'] for r in ran)}"
            f"-{max(r['load_after'] for r in ran)} during the run."
        )
    lines += [
        "",
        "| preset | size | E | block | GPU memory (GiB) | weights (GiB) | + GiB per extra image in a batch |"
        + (" CPU minutes / image | CPU RAM above start (GiB) |" if cpu else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if cpu else ""),
    ]
    for preset in PRESETS:
        g = gpu[preset]
        row = (
            f"| `{preset}` | {g['image_size'][0]}×{g['image_size'][1]} | {g['ensemble_size']} | {g['block']} | "
            f"{g['total_gib_fused_attention']:.1f} ({g['total_gib_materialised_attention']:.1f}) | "
            f"{g['weights_gib']:.2f} | {g['per_extra_image_gib']:.2f} |"
        )
        if cpu:
            c = cpu.get(preset)
            if c is None or "skipped" in c:
                row += f" not run{': ' + c['skipped'] if c else ''} | |"
            else:
                row += f" {c['minutes']:.1f} | {c['peak_rss_above_start_gib']:.1f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="also time one image per preset on the CPU (minutes)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for --cpu")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets for --cpu")
    parser.add_argument("--gpu-dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    args = parser.parse_args()

    import torch
    from common import machine, write_results

    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "machine": machine(),
        "gpu_dtype": args.gpu_dtype,
        "cuda_allowance_gib": CUDA_ALLOWANCE_GIB,
        "gpu_estimate": [gpu_estimate(p, args.gpu_dtype) for p in PRESETS],
        "model": "real-size SD 2.1 and ADM-256 architectures (packaged sd21 and adm256 configs), random weights",
    }
    name = "presets-gpu-estimate"
    if args.cpu:
        payload["cpu"] = []
        for preset in args.presets.split(","):
            print(f"{preset} ...", flush=True)
            payload["cpu"].append(cpu_time(preset, args.threads))
            gc.collect()  # the preset's random networks go before the next one's are built
            print(f"  {payload['cpu'][-1]}", flush=True)
        name = "presets-cpu"
    table = render_table(payload)
    path = write_results(name, payload, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
