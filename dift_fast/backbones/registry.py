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

if set(IMPLEMENTATIONS) != set(CARDS):  # a card without code or code without a card: a bug in this package
    raise RuntimeError(f"backbone cards {sorted(CARDS)} and implementations {sorted(IMPLEMENTATIONS)} differ")


def backbone_for(config: Any) -> Backbone:
    """The backbone of ``config`` (a :class:`~dift_fast.DiftConfig`), bound to its model; nothing is loaded yet."""
    return IMPLEMENTATIONS[config.backbone](config)
