"""DIFT_adm's network: OpenAI guided-diffusion's ``256x256_diffusion_uncond.pt`` hosted by diffusers' ``UNet2DModel``.

The checkpoint (a ``torch.save`` state dict, read with ``weights_only=True``; a ``.safetensors`` copy works too) is
converted once (:mod:`.adm_convert`) and the converted weights are cached as safetensors under
``cache_root() / "adm"``, keyed by the checkpoint's sha256 and the converter version, so later loads skip both the
pickle and the conversion. The architecture comes from the packaged ``adm256`` config.

DIFT_adm semantics (spec §6, DIFT's own code) that a backbone built on this must apply: pixel space (the image in
[−1, 1], no VAE), no text, guided-diffusion's linear β schedule (:func:`dift_fast.schedule.linear_noise_coefficients`),
x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε, the raw integer t, feature = output block k (:class:`TruncatedADM`) averaged over E.
Model: https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt (research use).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..architectures import architecture_dir
from ..cache import cache_root
from ..hashing import file_sha256
from ..schedule import linear_noise_coefficients
from .adm_convert import convert_adm_state_dict
from .adm_network import TruncatedADM
from .weights import WeightsError, check_state_dict, read_safetensors_shapes, read_state_dict

__all__ = [
    "ADM_CHECKPOINT_NAME",
    "ADM_CHECKPOINT_URL",
    "ADM_CONVERTER_VERSION",
    "adm_config",
    "adm_features",
    "build_adm_unet",
    "converted_cache_path",
    "load_adm_truncated",
    "load_adm_unet",
]

ADM_CHECKPOINT_NAME = "256x256_diffusion_uncond.pt"
ADM_CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
ADM_CONVERTER_VERSION = 1  # bump when the conversion changes: old cache entries are then ignored

logger = logging.getLogger(__name__)


def adm_config(architecture: str = "adm256") -> dict[str, Any]:
    """The packaged ``UNet2DModel`` config of an ADM architecture (a fresh dict)."""
    return json.loads((architecture_dir(architecture) / "config.json").read_text())


def build_adm_unet(config: dict[str, Any] | None = None, device: str | torch.device = "meta") -> nn.Module:
    """A ``UNet2DModel`` with this config; on the meta device by default (shapes only, no memory)."""
    from diffusers import UNet2DModel

    with torch.device(device):
        return UNet2DModel.from_config(dict(config or adm_config()))


def converted_cache_path(checkpoint_sha256: str) -> Path:
    """Where the converted weights of the checkpoint with this sha256 are cached."""
    return cache_root() / "adm" / f"{checkpoint_sha256}.v{ADM_CONVERTER_VERSION}.safetensors"


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _read_cached(path: Path, target_shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
    """The cached converted state dict, or None when absent or unusable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        state = read_state_dict(path)
        check_state_dict({k: tuple(v.shape) for k, v in state.items()}, target_shapes, path, "the ADM UNet")
    except WeightsError as err:
        logger.warning("ignoring the converted-weights cache entry %s (%s); converting again", path, err)
        return None
    return state


def _write_cached(path: Path, state: dict[str, torch.Tensor], source: Path) -> None:
    from safetensors.torch import save_file

    from ..atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"source": source.name})
    except OSError as err:  # a read-only or full cache only costs a conversion next time
        logger.warning("could not cache the converted ADM weights at %s: %s", path, err)


def load_adm_unet(
    checkpoint: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
    use_cache: bool = True,
) -> nn.Module:
    """Load a guided-diffusion ADM checkpoint into a ``UNet2DModel`` (eval mode, no grad, on the CPU).

    Args:
        checkpoint: ``256x256_diffusion_uncond.pt`` (guided-diffusion keys) or a ``.safetensors`` file with either
            guided-diffusion keys or already-converted ``UNet2DModel`` keys.
        dtype: parameter dtype of the returned model (the file's values are cast once).
        config: the ``UNet2DModel`` config; default: the packaged ``adm256`` one.
        use_cache: read/write the converted weights under ``cache_root() / "adm"``.

    Raises:
        WeightsError: unreadable or unsafe file (a pickle with code is refused, never run), or keys/shapes that do
            not fit the architecture (each named).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"ADM checkpoint {path} does not exist; download {ADM_CHECKPOINT_NAME} from {ADM_CHECKPOINT_URL}"
        )
    config = dict(config or adm_config())
    model = build_adm_unet(config, device="meta")
    target_shapes = _shapes(model)
    if path.suffix.lower() == ".safetensors" and read_safetensors_shapes(path).keys() == target_shapes.keys():
        use_cache = False  # already in UNet2DModel layout: nothing to convert, so nothing to cache
    cache_path = converted_cache_path(file_sha256(path)) if use_cache else None
    state = _read_cached(cache_path, target_shapes) if cache_path is not None else None
    if state is None:
        raw = read_state_dict(path)
        bad = sorted(k for k, v in raw.items() if not v.is_floating_point())
        if bad:
            raise WeightsError(f"{path}: non-floating-point weights for {', '.join(bad[:5])}")
        if raw.keys() == target_shapes.keys():  # already in UNet2DModel layout
            check_state_dict({k: tuple(v.shape) for k, v in raw.items()}, target_shapes, path, "the ADM UNet")
            state = raw
        else:
            state = convert_adm_state_dict(raw, config, target_shapes, source=path)
            if cache_path is not None:
                _write_cached(cache_path, state, path)
        del raw
    state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_adm_truncated(
    checkpoint: str | os.PathLike,
    block: int,
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
    config: dict[str, Any] | None = None,
) -> TruncatedADM:
    """Load the ADM checkpoint and keep only what DIFT's output block ``block`` needs (the rest is freed).

    ``config``: the ``UNet2DModel`` config (default: the packaged ``adm256`` one).
    """
    unet = load_adm_unet(checkpoint, dtype=dtype, config=config, use_cache=use_cache)
    return TruncatedADM(unet, block).eval()


def adm_features(
    network: TruncatedADM,
    images: torch.Tensor,  # [B, 3, H, W] in [-1, 1]
    t: int,
    noise: torch.Tensor,  # [B, E, 3, H, W]
) -> torch.Tensor:  # [B, C, H / stride, W / stride]
    """DIFT_adm's features, the straightforward way: noise each image E times, run to block k, average over E.

    x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε with guided-diffusion's linear schedule (float64 square roots rounded to float32),
    the raw integer t fed to the network, and the mean of the E block-k outputs (spec §6).

    Raises:
        ValueError: ``noise`` is not ``[B, E, 3, H, W]`` for these images.
    """
    b, c, h, w = images.shape
    if noise.ndim != 5 or noise.shape[0] != b or noise.shape[2:] != images.shape[1:]:
        raise ValueError(
            f"noise must be [B, E, {c}, {h}, {w}] with B={b} for images {tuple(images.shape)}, got {tuple(noise.shape)}"
        )
    sqrt_abar, sqrt_one_minus_abar = linear_noise_coefficients(t)
    e = noise.shape[1]
    x_t = sqrt_abar * images[:, None] + sqrt_one_minus_abar * noise  # [B, E, 3, H, W]
    features = network(x_t.reshape(b * e, c, h, w).to(network.dtype), t)
    return features.reshape(b, e, *features.shape[1:]).float().mean(dim=1)
