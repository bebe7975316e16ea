"""``dift-fast info``: what is installed and usable, and what a configuration costs (no weights are loaded)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from pathlib import Path
from typing import Any

from .common import add_model_options, backend_options_from_args, config_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show the environment, kernels, backends, and the model's parameter and FLOP counts",
        description=(
            "Show versions, devices, native kernels and backends, the resolved configuration, and the parameter "
            "counts and FLOPs per image of the VAE encoder and the truncated UNet. Only the component configs "
            "are read (from the folder, or downloaded from the hub: a few KB); no weights are loaded. "
            "Try: dift-fast info --model ../shared/sd21 (the SD 2.1 configs)."
        ),
    )
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def read_component_configs(model: str, revision: str | None) -> dict[str, dict[str, Any]]:
    """unet, vae and text_encoder configs of a local folder, 'tiny-random', or a hub id (configs only)."""
    from ..config import TINY_MODEL
    from ..loading import ModelLoadError

    names = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json"}
    if model == TINY_MODEL:
        from ..tiny import tiny_model_dir

        model = str(tiny_model_dir())
    folder = Path(model).expanduser()
    out = {}
    for comp, fname in names.items():
        if folder.is_dir():
            path = folder / comp / fname
            if not path.is_file():
                raise ModelLoadError(f"model folder {folder} is missing the '{comp}' component ({comp}/{fname})")
        else:
            try:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(model, f"{comp}/{fname}", revision=revision))
            except Exception as err:
                raise ModelLoadError(
                    f"could not read {comp}/{fname} of {model!r} from the hub ({type(err).__name__}); "
                    "pass a local folder with --model (e.g. ../shared/sd21 for the SD 2.1 configs)"
                ) from None
        out[comp] = json.loads(path.read_text())
    return out


def gather(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .. import __version__
    from ..backend_options import backend_options_for
    from ..config import DiftConfig
    from ..extractor import resolve_dtype
    from ..flops import count_parameters, measure_costs

    config = DiftConfig.from_preset(args.preset, **config_overrides(args))
    options = backend_options_for(config.backend, backend_options_from_args(args))
    cuda = torch.cuda.is_available()
    device = torch.device(config.device or ("cuda" if cuda else "cpu"))
    info: dict[str, Any] = {
        "dift_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "device": str(device),
        "dtype": str(resolve_dtype(config.dtype, device)).replace("torch.", ""),
        "config": config.to_dict(),
        "backend_options": options.to_dict() if options is not None else None,
        "kernels": kernel_status(),
        "backends": backend_status(),
    }
    configs = read_component_configs(config.model, config.revision)
    size = config.image_size or (768, 768)
    costs = measure_costs(configs["unet"], configs["vae"], size, config.up_ft_index)
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        text_params = count_parameters(CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])))
    E = config.ensemble_size
    info["model"] = {
        "truncated_unet_parameters": costs.unet_parameters,
        "vae_encoder_parameters": costs.vae_encoder_parameters,
        "text_encoder_parameters": text_params,
        "image_size": list(size),
        "vae_flops_per_image": costs.vae_flops,
        "unet_flops_per_member": costs.unet_flops,
        "flops_per_image": costs.per_image(E),
        "reference_flops_per_image": costs.reference_per_image(E),
    }
    return info


def kernel_status() -> dict[str, Any]:
    from .. import ops

    status = getattr(ops, "kernel_status", None)
    return status() if status else {"native": False, "reason": "native kernels are not wired in this build"}


def kernel_lines(status: dict[str, Any], device: str) -> list[str]:
    """Which kernel build is installed and why, and what runs on the CPU and on ``device`` (text for `info`)."""
    lines = [f"kernels      build '{status.get('variant', 'unknown')}': {status.get('reason', 'no reason recorded')}"]
    targets = [("cpu", "cpu")] + ([("cuda", device)] if device.startswith("cuda") else [])
    for key, name in targets:
        part = status[key]
        if part["usable"]:
            extra = " with OpenMP" if key == "cpu" and status.get("openmp") else ""
            lines.append(f"             on {name}: native kernels{extra}")
        else:
            lines.append(f"             on {name}: pure-torch twins (same results, slower): {part['reason']}")
    return lines


def backend_status() -> dict[str, str]:
    out = {"torch": "available"}
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        out["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    else:
        out["onnxruntime"] = "not installed (pip install 'dift-fast[onnx]')"
    if importlib.util.find_spec("tensorrt"):
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    else:
        out["tensorrt"] = "not installed (pip install tensorrt; needs an NVIDIA GPU)"
    if importlib.util.find_spec("faiss"):
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        out["faiss"] = f"{faiss.__version__} ({'GPU x' + str(gpus) if gpus else 'CPU'})"
    else:
        out["faiss"] = "not installed (pip install 'dift-fast[faiss]'); matching falls back to torch"
    return out


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


def _fmt_flops(n: int) -> str:
    return f"{n / 1e12:,.3f} TFLOP" if n >= 1e11 else f"{n / 1e9:,.3f} GFLOP"


def run(args: argparse.Namespace) -> int:
    info = gather(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg, m = info["config"], info["model"]
    gpus = ", ".join(info["gpus"]) or "none"
    print(f"dift-fast {info['dift_fast']}  python {info['python']}  torch {info['torch']}")
    print(f"device       {info['device']} ({info['dtype']}); GPUs: {gpus}")
    for line in kernel_lines(info["kernels"], info["device"]):
        print(line)
    for name, status in info["backends"].items():
        print(f"backend      {name}: {status}")
    if info["backend_options"] is not None:
        opts = ", ".join(f"{k}={v!r}" for k, v in info["backend_options"].items())
        print(f"options      {cfg['backend']}: {opts}")
    print(f"model        {cfg['model']} (revision {cfg['revision'] or 'default'})")
    w, h = m["image_size"]
    print(
        f"config       preset {cfg['preset']}, {w}x{h}, t={cfg['t']}, up_ft_index={cfg['up_ft_index']}, "
        f"E={cfg['ensemble_size']}, prompt {cfg['prompt']!r}, seed {cfg['seed']}, batch {cfg['batch_size']}"
    )
    print(
        f"parameters   truncated UNet {_fmt_count(m['truncated_unet_parameters'])}, "
        f"VAE encoder {_fmt_count(m['vae_encoder_parameters'])}, text encoder {_fmt_count(m['text_encoder_parameters'])}"
    )
    print(
        f"FLOPs/image  VAE {_fmt_flops(m['vae_flops_per_image'])} (once), "
        f"UNet to block {cfg['up_ft_index']} {_fmt_flops(m['unet_flops_per_member'])} (x E={cfg['ensemble_size']})"
    )
    print(
        f"             dift-fast {_fmt_flops(m['flops_per_image'])} vs reference "
        f"{_fmt_flops(m['reference_flops_per_image'])} (VAE on every member)"
    )
    return 0
