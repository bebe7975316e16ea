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

__all__ = ["IMPLEMENTATIONS", "backbone_for"]

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
