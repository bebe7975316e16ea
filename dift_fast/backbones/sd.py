"""DIFT_sd: a Stable Diffusion 1.x/2.x diffusers folder or hub id as a backbone (spec §1-2).

Encoder: the VAE's encoder and ``quant_conv`` (posterior mean and std, scaling factor from its config). Text: the
CLIP text encoder's last hidden state. Schedule: the folder's diffusers scheduler config. Network: the UNet up to
up block k (:class:`~dift_fast.unet.TruncatedUNet`), optionally with its weights replaced from a safetensors file
(``DiftConfig.unet_weights``). Only what DIFT needs is loaded: no VAE decoder, no later UNet blocks.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_MODEL, TINY_MODEL
from ..hashing import file_sha256, files_sha256
from ..schedule import DiffusersSchedule
from ..tiny import TINY_CLEANDIFT_WEIGHTS, TINY_MARKER
from ..unet import TruncatedUNet, VaeEncoder
from .base import Backbone, BlockInfo, ModelLoadError, content_digest

__all__ = ["REQUIRED_COMPONENTS", "SdBackbone", "read_component_configs", "resolve_model_folder"]

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_COMPONENT_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
# What DIFT reads of a hub model, as include patterns (the download and the offline advice both use them): every
# config (model_index.json, the components' configs, the tokenizer's JSON files), the tokenizer, and the
# safetensors weights of the UNet, the VAE and the text encoder; never the other weight formats, half-precision
# duplicates, single-file checkpoints or the pipeline's other parts.
SD_HUB_INCLUDE = (
    "*.json",
    "tokenizer/*",
    "*/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


def _check_folder(folder: Path) -> None:
    for name in REQUIRED_COMPONENTS:
        if not (folder / name / _COMPONENT_FILES[name]).is_file():
            raise ModelLoadError(
                f"model folder {folder} is missing the '{name}' component ({name}/{_COMPONENT_FILES[name]} not found); "
                f"DIFT needs a diffusers Stable Diffusion 2.x folder with {', '.join(f'{c}/' for c in REQUIRED_COMPONENTS)}"
            )


def _looks_local(model: str) -> bool:
    path = Path(model).expanduser()
    return path.exists() or model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1)


def sd_download_advice(model: str) -> str:
    """How to get the SD model ``model`` (a hub id) without network: the files DIFT reads, into a folder."""
    from .hub import download_advice

    return download_advice(model, include=SD_HUB_INCLUDE, use="--model DIR (from_pretrained(DIR))")


def _hub_error(model: str, revision: str | None, err: Exception) -> ModelLoadError:
    from .hub import hub_failure

    advice = sd_download_advice(model) + " For an offline smoke test use --model tiny-random."
    return ModelLoadError(hub_failure(f"model {model!r} (revision {revision or 'default'})", err, advice))


def resolve_model_folder(model: str = DEFAULT_MODEL, revision: str | None = None) -> Path:
    """A local folder holding the model: the folder itself, the built-in tiny model, or a hub snapshot."""
    if model == TINY_MODEL:
        from ..tiny import tiny_model_dir

        return tiny_model_dir()
    path = Path(model).expanduser()
    if _looks_local(model):
        if path.is_file():
            raise ModelLoadError(
                f"model {path} is a file; the SD backbone needs a diffusers folder or hub id (for a guided-diffusion "
                "checkpoint, DIFT_adm, pass preset='adm-spair' or backbone='adm')"
            )
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist")
        _check_folder(path)
        return path
    try:
        from .hub import hub_snapshot

        folder = hub_snapshot(model, revision, include=SD_HUB_INCLUDE)
    except Exception as err:  # network, auth, missing repo: all need the same advice
        raise _hub_error(model, revision, err) from None
    _check_folder(folder)
    return folder


def read_component_configs(model: str, revision: str | None = None) -> dict[str, dict[str, Any]]:
    """unet, vae and text_encoder configs of a local folder, 'tiny-random', or a hub id (configs only, KBs)."""
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
                from .hub import hub_file

                path = hub_file(model, f"{comp}/{fname}", revision)
            except Exception as err:
                raise _hub_error(model, revision, err) from None
        out[comp] = read_json_config(path)
    return out


def read_json_config(path: Path) -> dict[str, Any]:
    """A component's JSON config; an unreadable file or one that is not a JSON object is a ModelLoadError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a readable JSON config ({type(err).__name__}: {err}); restore the "
                             "file (e.g. download the model again)") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON config: it holds a {type(data).__name__}, not an object")
    return data


def _load(folder: Path, name: str, loader: Any) -> Any:
    try:
        return loader(folder / name)
    except Exception as err:
        raise ModelLoadError(f"model folder {folder}: could not load the '{name}' component: {err}") from err


def _fast_loading() -> dict[str, bool]:
    # Meta-device loading needs accelerate; without it diffusers warns on every load, so ask only when it helps.
    return {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


class SdBackbone(Backbone):
    """Stable Diffusion 1.x/2.x (DIFT_sd): VAE latent, CLIP text, diffusers noise schedule, UNet up blocks 0..3."""

    name = "sd"
    has_encoder = True

    # -- source, schedule, description ---------------------------------------------------------------------------

    def _resolve_source(self) -> Path:
        return resolve_model_folder(self.model_id, self.revision)

    def _make_schedule(self) -> DiffusersSchedule:
        return DiffusersSchedule(read_json_config(self.source / "scheduler" / "scheduler_config.json"))

    @cached_property
    def component_configs(self) -> dict[str, dict[str, Any]]:
        """unet, vae and text_encoder configs (from the folder, or only the config files of a hub model)."""
        source = self.__dict__.get("source")  # already resolved: read from there
        return read_component_configs(str(source) if source is not None else self.model_id, self.revision)

    @property
    def is_tiny(self) -> bool:
        if self.model_id == TINY_MODEL or self.unet_weights == TINY_CLEANDIFT_WEIGHTS:
            return True
        folder = self.__dict__.get("source") or Path(self.model_id).expanduser()
        index = Path(folder) / "model_index.json"
        return index.is_file() and TINY_MARKER in index.read_text()

    def block_info(self, block: int) -> BlockInfo:
        self.check_block(block)
        unet, vae = self.component_configs["unet"], self.component_configs["vae"]
        channels = list(reversed(unet["block_out_channels"]))
        levels = len(channels)
        upsamplers = min(block + 1, levels - 1)  # every up block but the last has an upsampler
        stride = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (levels - 1 - upsamplers)
        return BlockInfo(block, int(channels[block]), int(stride))

    # -- weights -------------------------------------------------------------------------------------------------

    @property
    def unet_weights(self) -> str | None:
        """The safetensors file (local or ``owner/repo/file``) replacing the UNet's weights; None keeps them."""
        return self.config.unet_weights

    @cached_property
    def unet_weights_file(self) -> Path | None:
        """The local path of :attr:`unet_weights` (downloaded once from the hub when it names a hub file)."""
        spec = self.unet_weights
        if spec is None:
            return None
        if spec == TINY_CLEANDIFT_WEIGHTS:
            from ..tiny import tiny_cleandift_weights

            return tiny_cleandift_weights()
        from .hub import resolve_weights_file

        return resolve_weights_file(spec, revision=None)

    def weight_files(self) -> list[Path]:
        files = [
            path
            for comp in REQUIRED_COMPONENTS
            for path in sorted((self.source / comp).iterdir())
            if path.is_file() and not path.name.startswith(".")
        ]
        if self.unet_weights_file is not None:
            files.append(self.unet_weights_file)
        return files

    def content_hash(self) -> str:
        """sha256 over the folder's component files; with ``unet_weights``, combined with that file's sha256."""
        folder_files = [f for f in self.weight_files() if f != self.unet_weights_file]
        folder_hash = files_sha256(folder_files, self.source)
        if self.unet_weights_file is None:
            return folder_hash
        return content_digest({"sd_folder": folder_hash, "unet_weights": file_sha256(self.unet_weights_file)})

    # -- loading ---------------------------------------------------------------------------------------------------

    def load_network(self, block: int, dtype: torch.dtype = torch.float32) -> TruncatedUNet:
        from diffusers import UNet2DConditionModel

        self.check_block(block)
        fast = _fast_loading()
        unet = _load(
            self.source, "unet", lambda p: UNet2DConditionModel.from_pretrained(p, torch_dtype=torch.float32, **fast)
        )
        if self.unet_weights_file is not None:
            from .unet_weights import load_unet_weights

            load_unet_weights(unet, self.unet_weights_file)  # cast into the (float32) UNet
        truncated = TruncatedUNet(unet, block)
        del unet  # later up blocks, conv_norm_out and conv_out go with it
        gc.collect()
        return truncated.to(dtype).eval().requires_grad_(False)

    def load_encoder(self, dtype: torch.dtype = torch.float32) -> VaeEncoder:
        from diffusers import AutoencoderKL

        fast = _fast_loading()
        vae_full = _load(
            self.source, "vae", lambda p: AutoencoderKL.from_pretrained(p, torch_dtype=torch.float32, **fast)
        )
        vae = VaeEncoder(vae_full)
        del vae_full  # the decoder is never kept
        gc.collect()
        return vae.to(dtype).eval().requires_grad_(False)

    def load_text_encoder(self) -> tuple[nn.Module, Any]:
        from transformers import CLIPTextModel, CLIPTokenizer

        text_encoder = _load(
            self.source, "text_encoder", lambda p: CLIPTextModel.from_pretrained(p, torch_dtype=torch.float32)
        )
        tokenizer = _load(self.source, "tokenizer", CLIPTokenizer.from_pretrained)
        return text_encoder.eval().requires_grad_(False), tokenizer

    # -- costs -----------------------------------------------------------------------------------------------------

    def costs(self, image_size: tuple[int, int], block: int) -> Any:
        from transformers import CLIPTextConfig, CLIPTextModel

        from ..flops import count_parameters, measure_costs

        configs = self.component_configs
        with torch.device("meta"):
            text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        return measure_costs(
            configs["unet"],
            configs["vae"],
            image_size,
            self.check_block(block),
            text_encoder_parameters=count_parameters(text),
        )
