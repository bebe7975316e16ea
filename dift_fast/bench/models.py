"""What ``dift-fast bench`` runs: a model (hub id, folder, ``tiny-random``) or an architecture with random weights.

An architecture is a set of component configs (``dift_fast.architectures`` ships ``sd21`` and ``adm256``, or a
folder of them): its networks are built with random weights, nothing is downloaded, and the timings are those of
the real model (the work of dense layers does not depend on the values of their weights). :func:`random_components`
is the project's one builder of random-weight real-size models (the scripts in ``benchmarks/`` call it too).
"""

from __future__ import annotations

import gc
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..architectures import ARCHITECTURES, architecture_dir
from ..backbones.base import DiftComponents
from ..backbones.catalog import default_preset_for_model
from ..config import DiftConfig

__all__ = [
    "SD_LAYOUT",
    "bench_model",
    "fill_random_",
    "random_components",
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
    """``module`` (built on the meta device) in CPU memory with :func:`fill_random_` weights; eval, no grad."""
    return fill_random_(module.to_empty(device="cpu"), seed).eval().requires_grad_(False)


def random_components(
    config: DiftConfig, seed: int = 0, *, blocks: Any = None
) -> DiftComponents | dict[int, DiftComponents]:
    """Random-weight :class:`~dift_fast.backbones.base.DiftComponents` of a real-size architecture, for ``config``.

    Nothing is downloaded and no weight file is read. SD 2.x and CleanDIFT: ``config.model`` is a folder of
    component configs (``unet/``, ``vae/``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json``;
    the packaged ``sd21`` one: :func:`~dift_fast.architectures.architecture_dir`), with dift-fast's byte-level
    tokenizer (its ids stay inside the vocabulary). ADM: ``config.model`` is ``adm256`` (the packaged config) or a
    folder holding a ``UNet2DModel`` ``config.json``. The networks are truncated after ``config.up_ft_index`` as
    the loader would; the weights are :func:`fill_random_`'s (deterministic in ``seed``).

    Args:
        config: the settings (its backbone, model and feature block).
        seed: seed of the weights.
        blocks: feature blocks: return ``{k: DiftComponents}`` truncated after each block k, all views of one
            random network (its modules shared, not copied) with one encoder and text encoder.

    Raises:
        ValueError: the configs cannot be read or do not build the backbone's network.
    """
    from ..backbones.registry import backbone_for

    backbone = backbone_for(config)
    wanted = sorted({backbone.check_block(k) for k in (blocks if blocks is not None else [config.up_ft_index])})
    if not backbone.has_encoder:  # ADM: pixel space, no text
        from ..backbones.adm import build_adm_unet
        from ..backbones.adm_network import TruncatedADM

        try:
            full = build_adm_unet(dict(backbone.architecture))  # meta: shapes only
            networks = {k: TruncatedADM(full, k) for k in wanted}
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"model {config.model!r}: the config does not build an ADM network: {err}") from None
        _materialize(networks[wanted[-1]], seed)  # the deepest holds every shallower one's modules
        del full
        gc.collect()
        made = {k: DiftComponents(backbone, k, net.eval().requires_grad_(False)) for k, net in networks.items()}
        return made if blocks is not None else made[config.up_ft_index]

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..tiny import _write_tokenizer
    from ..unet import TruncatedUNet, VaeEncoder

    folder = Path(config.model).expanduser()
    missing = [rel for rel in SD_LAYOUT if not (folder / rel).is_file()]
    if missing:
        raise ValueError(f"architecture folder {folder} is missing {', '.join(missing)} (the SD 2.x component configs)")
    backbone.__dict__["source"] = folder  # configs only (no weights, no tokenizer): skip the model-folder check

    def read(rel: str) -> dict[str, Any]:
        try:
            return json.loads((folder / rel).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"architecture folder {folder}: cannot read {rel}: {err}") from None

    text_config = {k: v for k, v in read("text_encoder/config.json").items() if k != "architectures"}
    try:
        with torch.device("meta"):
            full = UNet2DConditionModel.from_config(read("unet/config.json"))
            networks = {k: TruncatedUNet(full, k) for k in wanted}
            encoder = VaeEncoder(AutoencoderKL.from_config(read("vae/config.json")))
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"architecture folder {folder}: the configs do not build an SD 2.x model: {err}") from None
    _materialize(networks[wanted[-1]], seed)  # the deepest holds every shallower one's modules
    del full
    for net in networks.values():
        net.eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="dift-fast-tokenizer-") as tmp:
        _write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    encoder, text_encoder = _materialize(encoder, seed + 1), _materialize(text_encoder, seed + 2)
    gc.collect()
    made = {k: DiftComponents(backbone, k, net, encoder, text_encoder, tokenizer) for k, net in networks.items()}
    return made if blocks is not None else made[config.up_ft_index]


SD_LAYOUT = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json")


def bench_model(model: str | None, architecture: str | None) -> tuple[str, str, bool]:
    """``(model, default preset, random weights)`` for ``--model`` or ``--architecture``.

    An architecture is a built-in name (:data:`~dift_fast.architectures.ARCHITECTURES`: ``sd21``, ``adm256``), a
    folder of SD 2.x component configs, or a folder holding an ADM ``UNet2DModel`` ``config.json``; the model it
    gives is what :func:`random_components` builds from.
    """
    if (model is None) == (architecture is None):
        raise ValueError("give exactly one of a model (--model) and an architecture (--architecture)")
    if architecture is None:
        return model, default_preset_for_model(model), False
    if architecture in ARCHITECTURES:
        name = architecture if architecture == "adm256" else str(architecture_dir(architecture))
        return name, default_preset_for_model(architecture if architecture == "adm256" else None), True
    folder = Path(architecture).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"--architecture {architecture!r}: not a built-in architecture ({', '.join(ARCHITECTURES)}) and not a "
            "folder"
        )
    preset = default_preset_for_model(str(folder))
    if preset == default_preset_for_model(None):  # not an ADM folder: SD 2.x component configs
        missing = [rel for rel in SD_LAYOUT if not (folder / rel).is_file()]
        if missing:
            raise ValueError(
                f"architecture folder {folder} is missing {', '.join(missing)} (the SD 2.x component configs; "
                "an ADM folder holds a UNet2DModel config.json)"
            )
    return str(folder), preset, True
