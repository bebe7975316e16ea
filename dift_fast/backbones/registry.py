"""Backbone name -> its implementation: the one place that imports every backbone module.

A new backbone adds its class here (one line), its card with presets in :mod:`.catalog`, and its module.
"""

from __future__ import annotations

from typing import Any

from .adm_backbone import AdmBackbone
from .base import Backbone
from .catalog import CARDS
from .cleandift import CleanDiftBackbone
from .sd import SdBackbone

__all__ = ["IMPLEMENTATIONS", "backbone_for", "is_tiny_model"]

IMPLEMENTATIONS: dict[str, type[Backbone]] = {
    "sd": SdBackbone,
    "cleandift": CleanDiftBackbone,
    "adm": AdmBackbone,
}


def backbone_for(config: Any) -> Backbone:
    """The backbone of ``config`` (a :class:`~dift_fast.DiftConfig`), bound to its model; nothing is loaded yet."""
    if config.backbone not in IMPLEMENTATIONS:
        known = sorted(set(CARDS) & set(IMPLEMENTATIONS))
        raise ValueError(f"backbone {config.backbone!r} has a card but no implementation; known: {known}")
    return IMPLEMENTATIONS[config.backbone](config)


def is_tiny_model(config: Any) -> bool:
    """True when ``config``'s model is one of dift-fast's built-in random-weight test models (``tiny-random``,
    ``tiny-random-adm``, their folders, the tiny CleanDIFT weights): its features and matches are meaningless.

    The one test every caller uses (extractors, ``match-pairs``, stores); reads no weights, touches no network.
    """
    return backbone_for(config).is_tiny
