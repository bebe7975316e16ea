"""Loading only what DIFT needs from a diffusers SD folder or hub id (spec §1)."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DEFAULT_MODEL, TINY_MODEL
from .unet import TruncatedUNet, VaeEncoder

__all__ = ["REQUIRED_COMPONENTS", "DiftComponents", "ModelLoadError", "load_components", "resolve_model_folder"]

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_COMPONENT_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
# Files DIFT never needs: other weight formats, half-precision duplicates, the pipeline's extra parts.
_HUB_IGNORE = [
    "*.bin",
    "*.ckpt",
    "*.fp16.*",
    "*.msgpack",
    "*.onnx",
    "*.pb",
    "*.h5",
    "*.ot",
    "safety_checker/*",
    "feature_extractor/*",
    "*.png",
    "*.jpg",
]


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says how to fix it."""


@dataclass
class DiftComponents:
    """The parts of an SD pipeline DIFT runs. The VAE decoder and the UNet's later blocks are not here."""

    unet: TruncatedUNet
    vae: VaeEncoder
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    folder: Path
    model_id: str
    revision: str | None


def _check_folder(folder: Path) -> None:
    for name in REQUIRED_COMPONENTS:
        if not (folder / name / _COMPONENT_FILES[name]).is_file():
            raise ModelLoadError(
                f"model folder {folder} is missing the '{name}' component ({name}/{_COMPONENT_FILES[name]} not found); "
                f"DIFT needs a diffusers Stable Diffusion 2.x folder with {', '.join(f'{c}/' for c in REQUIRED_COMPONENTS)}"
            )


def resolve_model_folder(model: str = DEFAULT_MODEL, revision: str | None = None) -> Path:
    """A local folder holding the model: the folder itself, the built-in tiny model, or a hub snapshot."""
    if model == TINY_MODEL:
        from .tiny import tiny_model_dir

        return tiny_model_dir()
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist")
        _check_folder(path)
        return path
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model, revision=revision, ignore_patterns=_HUB_IGNORE))
    except Exception as err:  # network, auth, missing repo: all need the same advice
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelLoadError(
            f"could not get model {model!r} (revision {revision or 'default'}) from the Hugging Face hub: "
            f"{type(err).__name__}: {err}.\n"
            + ("HF_HUB_OFFLINE is set and the model is not in the local cache. " if offline else "")
            + "Without network: download it once elsewhere with `huggingface-cli download "
            f"{model} --local-dir DIR` and pass `--model DIR` (from_pretrained(DIR)), or set HF_HUB_OFFLINE=1 to "
            "use a copy already in the Hugging Face cache. For an offline smoke test use --model tiny-random."
        ) from None
    _check_folder(folder)
    return folder


def load_components(model: str = DEFAULT_MODEL, revision: str | None = None, up_ft_index: int = 1) -> DiftComponents:
    """Load the truncated UNet, the VAE encoder, the text encoder and tokenizer, and the schedule, in float32 on CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = resolve_model_folder(model, revision)

    def load(name: str, loader: Any) -> Any:
        try:
            return loader(folder / name)
        except Exception as err:
            raise ModelLoadError(f"model folder {folder}: could not load the '{name}' component: {err}") from err

    # Meta-device loading needs accelerate; without it diffusers warns on every load, so ask only when it helps.
    fast = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    unet_full = load("unet", lambda p: UNet2DConditionModel.from_pretrained(p, torch_dtype=torch.float32, **fast))
    unet = TruncatedUNet(unet_full, up_ft_index)
    del unet_full  # later up blocks, conv_norm_out and conv_out go with it
    vae_full = load("vae", lambda p: AutoencoderKL.from_pretrained(p, torch_dtype=torch.float32, **fast))
    vae = VaeEncoder(vae_full)
    del vae_full  # the decoder is never kept
    gc.collect()
    text_encoder = load("text_encoder", lambda p: CLIPTextModel.from_pretrained(p, torch_dtype=torch.float32))
    tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return DiftComponents(unet, vae, text_encoder, tokenizer, scheduler_config, folder, model, revision)
