"""The Backbone protocol: what a diffusion model must provide for DIFT to run on it, and what loading it yields.

A backbone is an optional encoder into the diffusion space (SD's VAE, or none: pixel space), an optional text
conditioner, a noise schedule, a truncated network with numbered feature blocks, and its presets (in
:mod:`.catalog`). Everything else -- the noise contract, the kernels, the extractor, matching, the store, the
index, export, the benchmarks -- only talks to this interface, so it works on every backbone:

- :class:`Backbone`: one model source bound to a :class:`~dift_fast.DiftConfig` (cheap to make: nothing is read
  until asked). Its sizes, schedule, block table and costs need no weights; :meth:`Backbone.load_components`
  loads them; :meth:`Backbone.model_identity` names the weights by content.
- :class:`DiftComponents`: the loaded parts (truncated network up to one block, encoder, text encoder).

The networks a backbone loads are :class:`FeatureNetwork` s: ``network(x_t, t, context, blocks=None)`` returns the
feature block's output ``[N, C, h, w]``, or with ``blocks=(k1, k2, ...)`` a dict ``{k: [N, C_k, h_k, w_k]}`` from
the same single pass (it runs to the deepest block asked for). ``context`` is None for an unconditional backbone.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from .catalog import BackboneCard, card

__all__ = ["Backbone", "BlockInfo", "DiftComponents", "FeatureNetwork", "ModelLoadError", "content_digest"]


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class BlockInfo:
    """One numbered feature block of a backbone."""

    index: int
    channels: int  # C of its output
    stride: int  # image pixels per feature cell (exact when the image size divides by it)


class FeatureNetwork(Protocol):
    """What a backbone's truncated network provides (:class:`~dift_fast.unet.TruncatedUNet`,
    :class:`~dift_fast.backbones.adm_network.TruncatedADM`): a ``torch.nn.Module`` with these members.

    ``forward(x_t [N, c, h, w], t, context [N, 77, D] | None, blocks=None)`` returns the feature block's output
    ``[N, C, h', w']``, or with ``blocks`` a dict ``{k: [N, C_k, h_k, w_k]}`` of every block asked for from one pass.
    """

    feature_block: int  # the deepest block kept: what forward returns without ``blocks``
    in_channels: int  # c of the diffusion-space sample
    out_channels: int  # C of the feature block
    num_downsamplers: int  # stages that halve the sample (rounding up)
    size_multiple: int  # diffusion-space sides must be multiples of this (1: any size)
    trace_side: int  # a side for tracing a general-size ONNX graph

    def block_channels(self, k: int) -> int: ...

    def num_upsamplers(self, k: int | None = None) -> int: ...

    def general_size_trace(self) -> AbstractContextManager[None]: ...

    def __call__(
        self, x_t: torch.Tensor, timestep: Any, context: torch.Tensor | None = None, blocks: Any = None
    ) -> Any: ...


def content_digest(parts: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``parts`` (the pieces a backbone's content hash is made of)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Backbone(ABC):
    """A diffusion model DIFT can run, bound to the model source and settings of one config.

    Subclasses set :attr:`name` (a key of :data:`~dift_fast.backbones.catalog.CARDS`) and implement the abstract
    methods; a new backbone is one such module plus its card in the catalog (docs/backbones.md).

    Args:
        config: the :class:`~dift_fast.DiftConfig` (its ``model``, ``revision`` and ``unet_weights`` say which
            weights; ``backbone`` must be this class's :attr:`name`).
    """

    name: ClassVar[str]
    has_encoder: ClassVar[bool]  # an encoder into the diffusion space (posterior noise, stream 0, is drawn)
    input_channels: ClassVar[int] = 3  # RGB images in [-1, 1]

    def __init__(self, config: Any) -> None:
        if config.backbone != self.name:
            raise ValueError(f"{type(self).__name__} is backbone {self.name!r}; the config says {config.backbone!r}")
        self.config = config
        self.card: BackboneCard = card(self.name)
        self.model_id: str = config.model
        self.revision: str | None = config.revision
        self._identity: dict[str, Any] | None = None

    # -- static description ------------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Feature blocks are numbered 0..num_blocks-1."""
        return self.card.num_blocks

    @property
    def size_multiple(self) -> int:
        """Image width and height must be multiples of this."""
        return self.card.size_multiple

    @property
    def conditioned(self) -> bool:
        """Takes a text prompt (has a text conditioner)."""
        return self.card.conditioned

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.card.presets.items()}

    def check_block(self, block: int) -> int:
        """``block`` if it is one of this backbone's feature blocks; else ValueError naming the range."""
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.num_blocks:
            raise ValueError(
                f"block {block!r} is not a feature block of backbone {self.name!r}: allowed are "
                f"0..{self.num_blocks - 1} ({self.card.blocks})"
            )
        return block

    @abstractmethod
    def block_info(self, block: int) -> BlockInfo:
        """Channels and stride of feature block ``block`` (from the architecture config; no weights)."""

    # -- the model source --------------------------------------------------------------------------------------

    @cached_property
    def source(self) -> Path:
        """The local folder or file holding the model (a hub model is downloaded on first access)."""
        return self._resolve_source()

    @cached_property
    def schedule(self) -> Any:
        """The :class:`~dift_fast.schedule.NoiseSchedule` of the forward diffusion."""
        return self._make_schedule()

    @abstractmethod
    def _resolve_source(self) -> Path: ...

    @abstractmethod
    def _make_schedule(self) -> Any: ...

    @property
    def is_tiny(self) -> bool:
        """True for dift-fast's built-in random-weight test models (their features are meaningless)."""
        return False

    @abstractmethod
    def weight_files(self) -> list[Path]:
        """Every file that decides this model's features (weights, and the configs read with them)."""

    @abstractmethod
    def content_hash(self) -> str:
        """sha256 (hex) naming the weights by content (from :mod:`dift_fast.hashing`: cached, cheap once done)."""

    def model_identity(self) -> dict[str, Any]:
        """What this model is, by content: ``{"backbone": name, "content_hash": sha256 hex, "schedule": {...}}``.

        ``content_hash`` covers every weight file (and converter version where weights are converted);
        ``schedule`` is :meth:`NoiseSchedule.describe`. Computed on first call (hashing the files once; later
        calls and later processes read :mod:`dift_fast.hashing`'s cache) and kept.
        """
        if self._identity is None:
            self._identity = {
                "backbone": self.name,
                "content_hash": self.content_hash(),
                "schedule": self.schedule.describe(),
            }
        return dict(self._identity)

    # -- loading -----------------------------------------------------------------------------------------------

    @abstractmethod
    def load_network(self, block: int, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The network truncated after feature block ``block`` (a :class:`FeatureNetwork`; eval, no grad, CPU)."""

    def load_encoder(self, dtype: torch.dtype = torch.float32) -> nn.Module | None:
        """The encoder into the diffusion space (``images -> (mean, std)``), or None in pixel space."""
        return None

    def load_text_encoder(self) -> tuple[nn.Module | None, Any]:
        """(text encoder, tokenizer) of a conditioned backbone, float32 on the CPU; (None, None) otherwise."""
        return None, None

    def load_components(self, block: int | None = None, *, networks: bool = True) -> DiftComponents:
        """Load what DIFT runs for feature block ``block`` (default: the config's ``up_ft_index``).

        Args:
            networks: load the network and encoder; False loads only the text encoder (for a backend that runs an
                ONNX export; :meth:`DiftComponents.ensure_networks` loads the rest later).
        """
        block = self.check_block(self.config.up_ft_index if block is None else block)
        components = DiftComponents(self, block)
        if networks:
            components.ensure_networks()
        components.text_encoder, components.tokenizer = self.load_text_encoder()
        return components

    @abstractmethod
    def costs(self, image_size: tuple[int, int], block: int) -> Any:
        """:class:`~dift_fast.flops.CostReport` for one image of ``image_size`` (W, H) (meta tensors, no weights)."""


@dataclass(eq=False)
class DiftComponents:
    """The loaded parts of a backbone DIFT runs: network to one block, encoder, text encoder. No decoder.

    ``network`` and ``encoder`` are None when the components were loaded for an accelerated backend that runs a
    verified ONNX export (``load_components(..., networks=False)``); :meth:`ensure_networks` loads them when
    something needs them. ``encoder`` is always None for a pixel-space backbone, ``text_encoder`` and
    ``tokenizer`` for an unconditional one. ``unet``, ``vae``, ``up_ft_index``, ``folder`` and ``model_id`` are the
    SD-era names of the same things.
    """

    backbone: Backbone
    block: int
    network: nn.Module | None = None
    encoder: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        self.backbone.check_block(self.block)
        if self.network is not None and self.network.feature_block != self.block:
            raise ValueError(f"the network ends at block {self.network.feature_block}, not block {self.block}")

    @property
    def has_networks(self) -> bool:
        """True when the network (and the encoder, if the backbone has one) are loaded."""
        return self.network is not None and (self.encoder is not None or not self.backbone.has_encoder)

    def load_networks(self, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module | None]:
        """A fresh (network, encoder) from the files, not kept here (e.g. to check an export's weights)."""
        return self.backbone.load_network(self.block, dtype), self.backbone.load_encoder(dtype)

    def ensure_networks(self) -> DiftComponents:
        """Load the network and the encoder if they are not loaded; returns self."""
        if not self.has_networks:
            self.network, self.encoder = self.load_networks()
        return self

    def release_networks(self) -> None:
        """Drop the network and the encoder (:meth:`ensure_networks` loads them again)."""
        self.network = self.encoder = None

    def weight_files(self) -> list[Path]:
        """The files the loaded weights come from (:meth:`Backbone.weight_files`)."""
        return self.backbone.weight_files()

    # -- SD-era names --------------------------------------------------------------------------------------------

    @property
    def unet(self) -> nn.Module | None:
        return self.network

    @unet.setter
    def unet(self, value: nn.Module | None) -> None:
        self.network = value

    @property
    def vae(self) -> nn.Module | None:
        return self.encoder

    @vae.setter
    def vae(self, value: nn.Module | None) -> None:
        self.encoder = value

    @property
    def up_ft_index(self) -> int:
        return self.block

    @property
    def folder(self) -> Path:
        """The model's local folder (or checkpoint file)."""
        return self.backbone.source

    @property
    def model_id(self) -> str:
        return self.backbone.model_id

    @property
    def revision(self) -> str | None:
        return self.backbone.revision
