"""``dift-fast info``: what is installed and usable, and what a configuration costs (no weights are loaded)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

from .common import add_model_options, backend_options_from_args, config_overrides, declare_needs, resolved_preset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show the environment, kernels, backends, and the model's parameter and FLOP counts",
        description=(
            "Show versions, devices, native kernels and backends, the resolved configuration, and the parameter "
            "counts and FLOPs per image of the encoder and the truncated network of any backbone. Only the "
            "architecture configs are read (from the folder, the packaged ADM-256 config, or downloaded from the "
            "hub: a few KB); no weights are loaded. Try: dift-fast info --model adm (DIFT_adm's architecture)."
        ),
    )
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)
    declare_needs(p, None, backend=False)  # reports what is missing instead of refusing to run


def gather(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``info`` reports: the environment, then the model (``model_error`` when it cannot be read)."""
    from ..backbones.base import ModelLoadError

    config = _config(args)
    info = environment(args, config)
    info["hub"] = hub_status(config)
    try:
        info["model"] = model_costs(config)
    except ModelLoadError as err:
        info["model_error"] = str(err)
    return info


def _config(args: argparse.Namespace) -> Any:
    from ..config import DiftConfig

    return DiftConfig.from_preset(resolved_preset(args), **config_overrides(args))


def environment(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """Versions, devices, kernels and backends: all local, nothing downloaded."""
    import torch

    from .. import __version__
    from ..backend_options import backend_options_for
    from ..extractor import resolve_dtype

    options = backend_options_for(config.backend, backend_options_from_args(args))
    cuda = torch.cuda.is_available()
    device = torch.device(config.device or ("cuda" if cuda else "cpu"))
    return {
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


def hub_status(config: Any) -> dict[str, Any] | None:
    """Whether the model's configs come from the Hugging Face hub and, if so, whether it is reachable and why not.

    None when the model is local (a folder, a checkpoint, a built-in tiny model or a packaged architecture).
    """
    from ..backbones.hub import hub_offline_reason
    from ..config import TINY_MODEL

    if config.backbone == "adm" or config.model == TINY_MODEL or Path(config.model).expanduser().exists():
        return None
    reason = hub_offline_reason()  # HF_HUB_OFFLINE, or one short request: no retries
    return {"model": config.model, "offline": reason is not None, "reason": reason}


def model_costs(config: Any) -> dict[str, Any]:
    """The backbone, feature block, parameter counts and FLOPs per image (architecture configs only, no weights)."""
    from ..backbones.registry import backbone_for

    backbone = backbone_for(config)  # reads architecture configs only: no weights
    size = config.image_size or (768, 768)
    costs = backbone.costs(size, config.up_ft_index)
    block = backbone.block_info(config.up_ft_index)
    E = config.ensemble_size
    return {
        "backbone": backbone.name,
        "title": backbone.card.title,
        "feature_block": {"index": block.index, "channels": block.channels, "stride": block.stride},
        "truncated_unet_parameters": costs.network_parameters,  # the network up to the block
        "network_total_parameters": costs.network_total_parameters,
        "vae_encoder_parameters": costs.encoder_parameters,  # None: no encoder (pixel space)
        "text_encoder_parameters": costs.text_encoder_parameters,  # None: no text
        "image_size": list(size),
        "vae_flops_per_image": costs.encoder_flops,
        "unet_flops_per_member": costs.network_flops,
        "flops_per_image": costs.per_image(E),
        "reference_flops_per_image": costs.reference_per_image(E),
    }


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
    if n == 0:
        return "0 FLOP"
    return f"{n / 1e12:,.3f} TFLOP" if n >= 1e11 else f"{n / 1e9:,.3f} GFLOP"


def run(args: argparse.Namespace) -> int:
    """Print the environment first (local, instant), then the model's costs (may need the hub's config files).

    Exit code 1 when the model's configs could not be read (the environment was still reported).
    """
    if args.json:
        info = gather(args)
        print(json.dumps(info, indent=2))
        return 1 if "model_error" in info else 0
    from ..backbones.base import ModelLoadError

    config = _config(args)
    env = environment(args, config)
    print_environment(env, config)
    hub = hub_status(config)
    if hub is not None:
        state = f"offline: {hub['reason']}; reading the local cache only" if hub["offline"] else "reachable"
        print(f"hub          {state}", flush=True)
    print(f"model        {config.model} (revision {config.revision or 'default'})", flush=True)
    try:
        m = model_costs(config)
    except ModelLoadError as err:
        print(f"dift-fast info: the model's configs could not be read: {err}", file=sys.stderr)
        return 1
    print_model(m, env["config"])
    return 0


def print_environment(info: dict[str, Any], config: Any) -> None:
    gpus = ", ".join(info["gpus"]) or "none"
    print(f"dift-fast {info['dift_fast']}  python {info['python']}  torch {info['torch']}")
    print(f"device       {info['device']} ({info['dtype']}); GPUs: {gpus}")
    for line in kernel_lines(info["kernels"], info["device"]):
        print(line)
    for name, status in info["backends"].items():
        print(f"backend      {name}: {status}")
    if info["backend_options"] is not None:
        opts = ", ".join(f"{k}={v!r}" for k, v in info["backend_options"].items())
        print(f"options      {config.backend}: {opts}")
    sys.stdout.flush()


def print_model(m: dict[str, Any], cfg: dict[str, Any]) -> None:
    print(f"backbone     {m['backbone']}: {m['title']}")
    w, h = m["image_size"]
    fb = m["feature_block"]
    print(
        f"config       preset {cfg['preset']}, {w}x{h}, t={cfg['t']}, up_ft_index={cfg['up_ft_index']} "
        f"({fb['channels']} channels, stride {fb['stride']}), E={cfg['ensemble_size']}, prompt {cfg['prompt']!r}, "
        f"seed {cfg['seed']}, batch {cfg['batch_size']}"
    )
    total = m["network_total_parameters"]
    encoder = m["vae_encoder_parameters"]
    text = m["text_encoder_parameters"]
    print(
        f"parameters   network to block {cfg['up_ft_index']} {_fmt_count(m['truncated_unet_parameters'])}"
        + (f" (of {_fmt_count(total)})" if total else "")
        + f", encoder {_fmt_count(encoder) if encoder is not None else 'none (pixel space)'}"
        + f", text encoder {_fmt_count(text) if text is not None else 'none'}"
    )
    print(
        f"FLOPs/image  encoder {_fmt_flops(m['vae_flops_per_image'])} (once), network to block {cfg['up_ft_index']} "
        f"{_fmt_flops(m['unet_flops_per_member'])} (x E={cfg['ensemble_size']})"
    )
    print(
        f"             dift-fast {_fmt_flops(m['flops_per_image'])} vs reference "
        f"{_fmt_flops(m['reference_flops_per_image'])} (encoder on every member)"
    )
