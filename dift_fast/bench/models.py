"""What ``dift-fast bench`` runs: a model (hub id, folder, ``tiny-random``) or an architecture with random weights.

An architecture is a folder of component configs (``dift_fast.architectures`` ships ``sd21``): its networks are
built with random weights, nothing is downloaded, and the timings are those of the real model (the work of dense
layers does not depend on the values of their weights). To add a backbone, add its builder to
:data:`ARCHITECTURE_BUILDERS` and, for folders, a layout test in :func:`resolve_architecture`.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..architectures import ARCHITECTURES, architecture_dir
from ..loading import DiftComponents, load_components

__all__ = [
    "ARCHITECTURE_BUILDERS",
    "build_sd_components",
    "fill_random_",
    "load_bench_components",
    "resolve_architecture",
]

# Random values are drawn once into a block of this many (a prime, so rows of a weight never repeat the same
# window) and laid out over every parameter: drawing 1.3 G values one by one takes about a minute on a small CPU.
_RANDOM_BLOCK = 1_048_573


def _bound(module: nn.Module, param_name: str, param: torch.Tensor) -> float | None:
    """Half-width of the uniform init of one parameter; None for a constant (norm weights 1, norm biases 0)."""
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return None
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv1d)):
        # torch's default (kaiming_uniform with a = sqrt(5)) for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        return 1.0 / math.sqrt(module.weight[0].numel())
    return 0.02 * math.sqrt(3.0)  # embeddings and anything else: the std of transformers' normal(0, 0.02)


@torch.no_grad()
def fill_random_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give ``module`` (e.g. fresh from ``to_empty``) deterministic random weights with the default init's scale.

    Linear and convolution weights and biases are uniform in ±1/sqrt(fan_in), norm layers are the identity,
    embeddings have standard deviation 0.02. Buffers named ``position_ids`` are reset to ``arange``; any other
    buffer is refused (its content could not be restored).
    """
    block = torch.from_numpy(np.random.default_rng(seed).random(_RANDOM_BLOCK, dtype=np.float32)) * 2 - 1
    offset = 0
    for owner in module.modules():
        for name, param in owner.named_parameters(recurse=False):
            bound = _bound(owner, name, param)
            if bound is None:
                param.fill_(1.0 if name == "weight" else 0.0)
                continue
            flat = param.view(-1)
            done = 0
            while done < flat.numel():
                start = (offset + done) % _RANDOM_BLOCK
                take = min(flat.numel() - done, _RANDOM_BLOCK - start)
                torch.mul(block[start : start + take], bound, out=flat[done : done + take])
                done += take
            offset += flat.numel()
    for name, buf in module.named_buffers():
        if name.endswith("position_ids"):
            buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
        else:
            raise NotImplementedError(f"cannot give buffer {name!r} of {type(module).__name__} a random value")
    return module


def _materialize(module: nn.Module, seed: int) -> nn.Module:
    return fill_random_(module.to_empty(device="cpu"), seed).eval().requires_grad_(False)


def build_sd_components(folder: Path, up_ft_index: int, seed: int = 0) -> DiftComponents:
    """Stable Diffusion 2.x networks from a folder of component configs, with random weights (no download).

    ``folder`` holds ``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json`` and
    ``scheduler/scheduler_config.json``. The tokenizer is dift-fast's byte-level stand-in (its ids stay inside
    the vocabulary). Only the truncated UNet and the VAE encoder get weights.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..tiny import _write_tokenizer
    from ..unet import TruncatedUNet, VaeEncoder

    def read(component: str, name: str = "config.json") -> dict[str, Any]:
        path = folder / component / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"architecture folder {folder}: cannot read {component}/{name}: {err}") from None

    text_config = {k: v for k, v in read("text_encoder").items() if k != "architectures"}
    try:
        with torch.device("meta"):
            unet = TruncatedUNet(UNet2DConditionModel.from_config(read("unet")), up_ft_index)
            vae = VaeEncoder(AutoencoderKL.from_config(read("vae")))
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"architecture folder {folder}: the configs do not build an SD 2.x model: {err}") from None
    with tempfile.TemporaryDirectory(prefix="dift-fast-tokenizer-") as tmp:
        _write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    return DiftComponents(
        unet=_materialize(unet, seed),
        vae=_materialize(vae, seed + 1),
        text_encoder=_materialize(text_encoder, seed + 2),
        tokenizer=tokenizer,
        scheduler_config=read("scheduler", "scheduler_config.json"),
        folder=folder,
        model_id=f"{folder.name}-random-weights",
        revision=None,
    )


# Architecture kind -> builder(folder, up_ft_index) of random-weight components.
ARCHITECTURE_BUILDERS: dict[str, Callable[[Path, int], DiftComponents]] = {"sd21": build_sd_components}
_SD_LAYOUT = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json")


def resolve_architecture(spec: str) -> tuple[str, Path]:
    """``(kind, folder)`` of a built-in architecture name (``sd21``) or a folder of component configs."""
    if spec in ARCHITECTURES:
        if spec not in ARCHITECTURE_BUILDERS:
            raise ValueError(
                f"architecture {spec!r} cannot be benchmarked in this version (no builder for it yet); "
                f"choose one of {', '.join(ARCHITECTURE_BUILDERS)} or a folder of SD 2.x component configs"
            )
        return spec, architecture_dir(spec)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"--architecture {spec!r}: not a built-in architecture ({', '.join(ARCHITECTURE_BUILDERS)}) "
            "and not a folder"
        )
    if all((folder / rel).is_file() for rel in _SD_LAYOUT):
        return "sd21", folder
    missing = [rel for rel in _SD_LAYOUT if not (folder / rel).is_file()]
    raise ValueError(f"architecture folder {folder} is missing {', '.join(missing)} (the SD 2.x component configs)")


def load_bench_components(
    model: str | None, architecture: str | None, up_ft_index: int, revision: str | None = None
) -> tuple[DiftComponents, str]:
    """Components to benchmark and a label for them: a model loaded as usual, or an architecture built here."""
    if (model is None) == (architecture is None):
        raise ValueError("give exactly one of a model (--model) and an architecture (--architecture)")
    if architecture is not None:
        kind, folder = resolve_architecture(architecture)
        label = f"{architecture if architecture in ARCHITECTURES else folder} (architecture, random weights)"
        return ARCHITECTURE_BUILDERS[kind](folder, up_ft_index), label
    return load_components(model, revision, up_ft_index), model
