"""Loading only what DIFT needs for a config, whatever its backbone (spec §1, §6).

:func:`load_components` hands the config to its backbone (:mod:`dift_fast.backbones.registry`), which loads the
network truncated after the feature block, the encoder (SD's VAE encoder; none in pixel space) and the text
encoder (none for an unconditional backbone), float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

from .backbones.base import DiftComponents, ModelLoadError
from .backbones.catalog import default_preset_for_model
from .backbones.registry import backbone_for
from .backbones.sd import REQUIRED_COMPONENTS, resolve_model_folder
from .config import DEFAULT_MODEL, DiftConfig

__all__ = [
    "REQUIRED_COMPONENTS",
    "DiftComponents",
    "ModelLoadError",
    "config_for_model",
    "load_components",
    "resolve_model_folder",
]


def config_for_model(
    model: str = DEFAULT_MODEL, revision: str | None = None, up_ft_index: int | None = None, **fields: Any
) -> DiftConfig:
    """The config of ``model`` under the default preset of the backbone its name points to, with ``fields``."""
    if up_ft_index is not None:
        fields["up_ft_index"] = up_ft_index
    return DiftConfig.from_preset(default_preset_for_model(model), model=model, revision=revision, **fields)


def load_components(
    model: DiftConfig | str = DEFAULT_MODEL,
    revision: str | None = None,
    up_ft_index: int | None = None,
    *,
    networks: bool = True,
) -> DiftComponents:
    """Load what DIFT runs, float32 on the CPU: the truncated network, the encoder and the text encoder.

    Args:
        model: a :class:`~dift_fast.DiftConfig` (its backbone, model, revision, unet_weights and up_ft_index), or
            a model name, read under the default preset of the backbone it points to (a diffusers folder or hub
            id: SD; a checkpoint file or ``tiny-random-adm``: ADM) with ``revision`` and ``up_ft_index``.
        networks: load the network and the encoder; False loads only the text encoder and tokenizer (for a
            backend that runs an ONNX export; :meth:`DiftComponents.ensure_networks` loads the rest later).

    Raises:
        ModelLoadError: the model cannot be found or read (the message says how to fix it).
    """
    if isinstance(model, DiftConfig):
        if revision is not None or up_ft_index is not None:
            raise TypeError("load_components(config): revision and up_ft_index come from the config")
        config = model
    else:
        config = config_for_model(model, revision, up_ft_index)
    return backbone_for(config).load_components(networks=networks)
