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

__all__ = [
    "REQUIRED_COMPONENTS",
    "DiftComponents",
    "ModelLoadError",
    "load_components",
    "load_networks",
    "resolve_model_folder",
]

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
    """The parts of an SD pipeline DIFT runs. The VAE decoder and the UNet's later blocks are not here.

    ``unet`` and ``vae`` are None when the components were loaded for an accelerated backend that runs a verified
    ONNX export (``load_components(..., networks=False)``): only the text encoder and tokenizer are needed then.
    :meth:`ensure_networks` loads them when something does need them.
    """

    unet: TruncatedUNet | None
    vae: VaeEncoder | None
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    folder: Path
    model_id: str
    revision: str | None
    up_ft_index: int | None = None  # the block ``unet`` ends at (taken from ``unet`` when given)

    def __post_init__(self) -> None:
        if self.unet is not None:
            if self.up_ft_index is not None and self.up_ft_index != self.unet.up_ft_index:
                raise ValueError(f"up_ft_index={self.up_ft_index} but the unet ends at block {self.unet.up_ft_index}")
            self.up_ft_index = self.unet.up_ft_index
        elif self.up_ft_index is None:
            raise ValueError("DiftComponents without a unet needs up_ft_index")

    @property
    def has_networks(self) -> bool:
        """True when the truncated UNet and the VAE encoder are loaded."""
        return self.unet is not None and self.vae is not None

    def ensure_networks(self) -> DiftComponents:
        """Load the truncated UNet and the VAE encoder from ``folder`` if they are not loaded; returns self."""
        if not self.has_networks:
            self.unet, self.vae = load_networks(self.folder, self.up_ft_index)
        return self


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


def load_networks(folder: str | os.PathLike, up_ft_index: int) -> tuple[TruncatedUNet, VaeEncoder]:
    """The truncated UNet (up to block ``up_ft_index``) and the VAE encoder of a model folder, float32 on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    # Meta-device loading needs accelerate; without it diffusers warns on every load, so ask only when it helps.
    fast = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    unet_full = _load(folder, "unet", lambda p: UNet2DConditionModel.from_pretrained(p, torch_dtype=torch.float32,
                                                                                      **fast))
    unet = TruncatedUNet(unet_full, up_ft_index)
    del unet_full  # later up blocks, conv_norm_out and conv_out go with it
    vae_full = _load(folder, "vae", lambda p: AutoencoderKL.from_pretrained(p, torch_dtype=torch.float32, **fast))
    vae = VaeEncoder(vae_full)
    del vae_full  # the decoder is never kept
    gc.collect()
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    return unet, vae


def load_components(
    model: str = DEFAULT_MODEL, revision: str | None = None, up_ft_index: int = 1, *, networks: bool = True
) -> DiftComponents:
    """Load the truncated UNet, the VAE encoder, the text encoder and tokenizer, and the schedule, in float32 on CPU.

    Args:
        networks: load the UNet and the VAE; False loads only the text encoder, tokenizer and schedule (for a
            backend that runs an ONNX export; :meth:`DiftComponents.ensure_networks` loads the rest later).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = resolve_model_folder(model, revision)
    unet, vae = load_networks(folder, up_ft_index) if networks else (None, None)
    text_encoder = _load(folder, "text_encoder", lambda p: CLIPTextModel.from_pretrained(p, torch_dtype=torch.float32))
    tokenizer = _load(folder, "tokenizer", CLIPTokenizer.from_pretrained)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    text_encoder.eval().requires_grad_(False)
    return DiftComponents(unet, vae, text_encoder, tokenizer, scheduler_config, folder, model, revision, up_ft_index)


def _load(folder: Path, name: str, loader: Any) -> Any:
    try:
        return loader(folder / name)
    except Exception as err:
        raise ModelLoadError(f"model folder {folder}: could not load the '{name}' component: {err}") from err
