"""What every backbone is, as plain data: its name, feature blocks, size rule, presets and benchmark protocols.

This is the one table :class:`~dift_fast.config.DiftConfig` validates against and takes its presets from; it
imports nothing from the package, so the config never loads a model library. The code that loads and runs a
backbone is its module (:mod:`.sd`, :mod:`.cleandift`, :mod:`.adm_backbone`), found through :mod:`.registry`.

Adding a backbone: one :class:`BackboneCard` here (with its presets), one module with a
:class:`~dift_fast.backbones.base.Backbone` subclass, and one line in :mod:`.registry` (docs/backbones.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "CARDS",
    "CHECKPOINT_SUFFIXES",
    "PRESETS",
    "BackboneCard",
    "card",
    "default_preset_for_model",
    "preset_card",
    "propagation_overrides",
    "protocol_preset",
]

# A model given as one weights file (not a diffusers folder) is a guided-diffusion checkpoint (DIFT_adm).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class BackboneCard:
    """A backbone's static description (no code, no weights)."""

    name: str  # the value of DiftConfig.backbone
    title: str  # one line for people
    num_blocks: int  # feature blocks are numbered 0..num_blocks-1 (DiftConfig.up_ft_index)
    blocks: str  # what the blocks are, for messages
    size_multiple: int  # image width and height must be multiples of this
    conditioned: bool  # takes a text prompt
    model_help: str  # what DiftConfig.model names, for messages
    model_names: tuple[str, ...]  # special model names that mean this backbone (e.g. its tiny random model)
    takes_unet_weights: bool  # DiftConfig.unet_weights may replace its UNet's weights
    default_preset: str
    presets: Mapping[str, Mapping[str, Any]]
    benchmark_presets: Mapping[str, str]  # benchmark -> the preset holding its protocol for this backbone
    # preset -> settings of the label propagation (eval davis/jhmdb) that differ from its defaults
    propagation: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_SD_PRESETS = {
    # SPair-71k semantic correspondence (the default): 768², t=261, up block 1, E=8.
    "spair": {"image_size": (768, 768), "t": 261, "up_ft_index": 1, "ensemble_size": 8},
    # HPatches geometric correspondence: 768², t=0, up block 2, E=8, empty prompt.
    "hpatches": {"image_size": (768, 768), "t": 0, "up_ft_index": 2, "ensemble_size": 8, "prompt": ""},
    # DAVIS-2017 temporal correspondence: t=51, up block 2, E=8; size from the video (short side 480).
    "davis": {"image_size": (832, 480), "t": 51, "up_ft_index": 2, "ensemble_size": 8, "prompt": ""},
}
_ADM_PRESETS = {
    # DIFT_adm (spec §6): SPair 512², t=101, output block 4 (1024 channels, stride 16), E=8.
    "adm-spair": {"image_size": (512, 512), "t": 101, "up_ft_index": 4, "ensemble_size": 8, "prompt": ""},
    # HPatches: 768², t=41, output block 11, E=4.
    "adm-hpatches": {"image_size": (768, 768), "t": 41, "up_ft_index": 11, "ensemble_size": 4, "prompt": ""},
    # DAVIS: t=51, output block 7, E=4; size from the video (short side 480, a multiple of 32).
    "adm-davis": {"image_size": (832, 480), "t": 51, "up_ft_index": 7, "ensemble_size": 4, "prompt": ""},
}
CLEANDIFT_UNET_WEIGHTS = "CompVis/cleandift/cleandift_sd21_unet.safetensors"  # hub repo + file
_CLEANDIFT_PRESETS = {
    # CleanDIFT (spec §6): SD 2.1 with CleanDIFT's UNet, 768², t=261 without noise, up block 1 (its us6), E=1.
    "cleandift": {
        "image_size": (768, 768),
        "t": 261,
        "up_ft_index": 1,
        "ensemble_size": 1,
        "unet_weights": CLEANDIFT_UNET_WEIGHTS,
    },
}
_BENCHMARKS = ("spair", "pf-willow", "hpatches", "davis", "jhmdb", "synthetic-homography")


def _protocols(spair: str, hpatches: str, davis: str) -> dict[str, str]:
    # PF-WILLOW uses SPair's settings, JHMDB DAVIS's (DIFT's code gives none of its own), the synthetic
    # homography check HPatches'.
    return {
        "spair": spair,
        "pf-willow": spair,
        "hpatches": hpatches,
        "davis": davis,
        "jhmdb": davis,
        "synthetic-homography": hpatches,
    }


# name -> card. A new backbone adds its card here (and its class in registry.IMPLEMENTATIONS).
CARDS: dict[str, BackboneCard] = {
    "sd": BackboneCard(
        name="sd",
        title="Stable Diffusion 2.x (DIFT_sd): VAE latent, CLIP text, scaled-linear noise, UNet up blocks",
        num_blocks=4,
        blocks="the UNet's up blocks",
        size_multiple=8,
        conditioned=True,
        model_help="a hub id, a local diffusers folder or 'tiny-random'",
        model_names=("tiny-random",),
        takes_unet_weights=True,
        default_preset="spair",
        presets=_SD_PRESETS,
        benchmark_presets=_protocols("spair", "hpatches", "davis"),
    ),
    "cleandift": BackboneCard(
        name="cleandift",
        title="CleanDIFT: SD 2.1 with a fine-tuned UNet, the clean latent (no diffusion noise), UNet up blocks",
        num_blocks=4,
        blocks="the UNet's up blocks",
        size_multiple=8,
        conditioned=True,
        model_help="the SD 2.1 hub id or diffusers folder (its UNet weights come from unet_weights), or 'tiny-random'",
        model_names=(),
        takes_unet_weights=True,
        default_preset="cleandift",
        presets=_CLEANDIFT_PRESETS,
        benchmark_presets=dict.fromkeys(_BENCHMARKS, "cleandift"),
    ),
    "adm": BackboneCard(
        name="adm",
        title="ADM (DIFT_adm): guided-diffusion 256x256 unconditional, pixel space, linear noise, output blocks",
        num_blocks=18,
        blocks="the ADM decoder's output blocks",
        size_multiple=32,
        conditioned=False,
        model_help="the guided-diffusion checkpoint 256x256_diffusion_uncond.pt, a folder with config.json and one "
        "checkpoint, or 'tiny-random-adm'",
        model_names=("tiny-random-adm", "adm", "adm256"),
        takes_unet_weights=False,
        default_preset="adm-spair",
        presets=_ADM_PRESETS,
        benchmark_presets=_protocols("adm-spair", "adm-hpatches", "adm-davis"),
        # DIFT's DAVIS settings for ADM: temperature 0.1 and top-k 10 (SD's: 0.2 and 15).
        propagation={"adm-davis": {"temperature": 0.1, "topk": 10}},
    ),
}


class _Presets(Mapping[str, Mapping[str, Any]]):
    """Every preset of every card, with the backbone it belongs to (read through :data:`CARDS`, never copied)."""

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        for c in CARDS.values():
            if name in c.presets:
                return MappingProxyType({**c.presets[name], "backbone": c.name})
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (name for c in CARDS.values() for name in c.presets)

    def __len__(self) -> int:
        return sum(len(c.presets) for c in CARDS.values())

    def __repr__(self) -> str:
        return repr(dict(self))


# DiftConfig.from_preset(name) applies PRESETS[name] (its fields, "backbone" included).
PRESETS: Mapping[str, Mapping[str, Any]] = _Presets()


def card(name: str) -> BackboneCard:
    """The card of backbone ``name``; ValueError naming the known ones."""
    if name not in CARDS:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(CARDS)}")
    return CARDS[name]


def preset_card(preset: str) -> BackboneCard:
    """The card of the backbone preset ``preset`` belongs to."""
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return CARDS[PRESETS[preset]["backbone"]]


def default_preset_for_model(model: str | None) -> str:
    """The preset a model gets when none is named: the default preset of the backbone its name points to.

    A model that is one weights file (``.pt``, ``.pth``, ``.safetensors``, ``.ckpt``), a folder whose ``config.json``
    is a ``UNet2DModel``'s (an ADM model folder) or a special name of a backbone (``tiny-random-adm``) points to
    that backbone; anything else (a hub id, a diffusers pipeline folder) to SD.
    """
    if model:
        for c in CARDS.values():
            if model in c.model_names:
                return c.default_preset
        path = Path(model).expanduser()
        if path.suffix.lower() in CHECKPOINT_SUFFIXES or _is_unet2d_folder(path):
            return CARDS["adm"].default_preset
    return CARDS["sd"].default_preset


def _is_unet2d_folder(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError, AttributeError):
        return False


def protocol_preset(benchmark: str, backbone: str = "sd") -> str:
    """The preset holding ``benchmark``'s protocol for ``backbone`` (spec §5, §6)."""
    presets = card(backbone).benchmark_presets
    if benchmark not in presets:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(presets)}")
    return presets[benchmark]


def propagation_overrides(preset: str | None) -> dict[str, Any]:
    """Label-propagation settings of ``preset`` that differ from the defaults (empty for most presets)."""
    if preset is None or preset not in PRESETS:
        return {}
    return dict(preset_card(preset).propagation.get(preset, {}))
