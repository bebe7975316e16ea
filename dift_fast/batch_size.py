"""``batch_size="auto"``: images per micro-batch from free GPU memory and the networks' activation footprint.

On CUDA one network call runs a whole micro-batch, so a larger batch fills the GPU better until memory runs out.
The footprint of one image is measured on the architecture itself, without weights or compute: the backend's
networks are copied to the ``meta`` device and run once on a one-row input of the configured image size while a
dispatch mode follows every tensor the pass creates and frees (:func:`peak_activation_bytes`). That gives the
peak of live activations of one UNet row (E rows per image) and of one encoder image, which grow linearly with
the rows (counted by this trace on the meta device: 129 MB per UNet row and 720 MB per VAE image for SD 2.1 at
768² in bf16; not yet compared with a GPU's measured peak). Attention run by
SDPA's math kernel materialises its scores inside one operation; they are added where that kernel would run.

:func:`batch_size_for_memory` turns free memory and the per-image bytes into a batch size: a fraction of the free
memory (the rest for cuDNN workspaces, the allocator's fragmentation and CUDA graph pools), capped, at least 1.
On the CPU the networks run image by image anyway (bit-identical features whatever the batch), so "auto" is 1
there, and for the onnxruntime and tensorrt backends, which size their own buffers and engine profiles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .config import AUTO_BATCH

__all__ = [
    "MAX_AUTO_BATCH",
    "MEMORY_FRACTION",
    "PerImageMemory",
    "batch_size_for_memory",
    "estimate_per_image_memory",
    "peak_activation_bytes",
    "resolve_batch_size",
]

logger = logging.getLogger(__name__)

MAX_AUTO_BATCH = 32  # images per micro-batch at most (here and in the feature store's measured size)
# Share of the free memory the estimate may fill: the rest covers what the estimate does not see (cuDNN workspaces
# of up to a few hundred MB, the caching allocator's rounding and fragmentation, CUDA graph pools, the text
# encoder's activations) and leaves other processes on the GPU room to breathe.
MEMORY_FRACTION = 0.7


def batch_size_for_memory(
    free_bytes: int, per_image_bytes: int, *, fraction: float = MEMORY_FRACTION, cap: int = MAX_AUTO_BATCH
) -> int:
    """Images per micro-batch: ``floor(fraction · free / per_image)``, clamped to 1..``cap``.

    Raises:
        ValueError: ``per_image_bytes`` < 1, ``free_bytes`` < 0, ``fraction`` outside (0, 1] or ``cap`` < 1.
    """
    if per_image_bytes < 1:
        raise ValueError(f"per_image_bytes must be >= 1, got {per_image_bytes}")
    if free_bytes < 0:
        raise ValueError(f"free_bytes must be >= 0, got {free_bytes}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    return max(1, min(cap, int(fraction * free_bytes) // int(per_image_bytes)))


class _LiveBytes(TorchDispatchMode):
    """Follows the storages the traced operations create; records the peak of the live ones."""

    def __init__(self, extra_bytes: Callable[[Any, tuple, dict], int] | None = None) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weak = StorageWeakRef
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0
        self.extra_bytes = extra_bytes

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._sweep()
        transient = self.extra_bytes(func, args, kwargs) if self.extra_bytes is not None else 0
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = self._weak(storage)
                if ref.cdata not in self.live:  # a view shares its base's storage: counted once
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current + transient)
        return out


def peak_activation_bytes(
    fn: Callable[..., Any], *args: Any, extra_bytes: Callable[[Any, tuple, dict], int] | None = None
) -> int:
    """Peak bytes of the tensors ``fn(*args)`` creates and holds at once (inputs and parameters not counted).

    Run it on ``meta`` tensors and a ``meta`` copy of the module: no memory is used and nothing is computed.
    ``extra_bytes(func, args, kwargs)`` adds memory an operation uses inside itself (counted at that operation).
    """
    mode = _LiveBytes(extra_bytes)
    with torch.inference_mode(), mode:
        out = fn(*args)
    del out
    return mode.peak


def _math_attention_scores(device: torch.device) -> Callable[[Any, tuple, dict], int]:
    """Bytes of the float32 scores and probabilities SDPA's math kernel materialises, where it would run."""
    from .attention import sdpa_kernel_name

    def extra(func: Any, args: tuple, kwargs: dict) -> int:
        if "scaled_dot_product" not in str(func) or len(args) < 2:
            return 0
        query, key = args[0], args[1]
        if query.ndim != 4:
            return 0
        batch, heads, q_len, head_dim = query.shape
        if sdpa_kernel_name(device, query.dtype, int(heads), int(head_dim)) not in ("math", "unknown"):
            return 0
        return 2 * 4 * int(batch) * int(heads) * int(q_len) * int(key.shape[-2])  # scores + softmax, float32

    return extra


class PerImageMemory:
    """Activation bytes one image needs: E network rows, or the encoder, whichever is larger, plus held outputs."""

    def __init__(self, network_row: int, encoder_image: int, held: int, ensemble_size: int) -> None:
        self.network_row = int(network_row)
        self.encoder_image = int(encoder_image)
        self.held = int(held)
        self.ensemble_size = int(ensemble_size)

    @property
    def total(self) -> int:
        """The network and the encoder run one after the other; the held tensors live through both."""
        return max(self.ensemble_size * self.network_row, self.encoder_image) + self.held

    def __repr__(self) -> str:
        return (
            f"PerImageMemory(network_row={self.network_row}, encoder_image={self.encoder_image}, "
            f"held={self.held}, ensemble_size={self.ensemble_size}, total={self.total})"
        )


def estimate_per_image_memory(
    network: Any,
    encoder: Any | None,
    geometry: Any,
    dtype: torch.dtype,
    device: torch.device,
    image_size: tuple[int, int],
    ensemble_size: int,
    context_shape: tuple[int, int] | None,
) -> PerImageMemory:
    """Trace the networks on ``meta`` at ``image_size`` (W, H) and size one image's activations on ``device``.

    Args:
        network, encoder: the modules as they will run (processors, memory format); ``meta`` copies are traced.
        geometry: their :class:`~dift_fast.geometry.NetworkGeometry`.
        dtype, device: the compute dtype and the device they will run on (it decides the attention kernels).
        image_size: (W, H) of the images.
        ensemble_size: E, the network rows per image.
        context_shape: (tokens, width) of the prompt embedding, or None for an unconditional network.
    """
    from .backends import placed_copy

    meta = torch.device("meta")
    w, h = image_size
    lh, lw = geometry.latent_hw(h, w)
    extra = _math_attention_scores(torch.device(device))
    x = torch.empty((1, geometry.latent_channels, lh, lw), dtype=dtype, device=meta)
    t = torch.zeros((1,), dtype=torch.int64, device=meta)
    ctx = torch.empty((1, *context_shape), dtype=dtype, device=meta) if context_shape is not None else None
    row = peak_activation_bytes(placed_copy(network, meta), x, t, ctx, extra_bytes=extra)
    encoder_image = 0
    if encoder is not None:
        image = torch.empty((1, 3, h, w), dtype=dtype, device=meta)
        encoder_image = peak_activation_bytes(placed_copy(encoder, meta), image, extra_bytes=extra)
    c, fh, fw = geometry.feature_shape(image_size)
    item = torch.empty((), dtype=dtype).element_size()
    held = (
        ensemble_size * (geometry.latent_channels * lh * lw * item + c * fh * fw * item)  # x_t, member features
        + 2 * c * fh * fw * 4
    )  # the float32 mean, and its copy when the micro-batches are concatenated
    return PerImageMemory(row, encoder_image, held, ensemble_size)


def resolve_batch_size(
    config: Any,
    backend: Any,
    context_shape: tuple[int, int] | None,
    *,
    free_bytes: Callable[[torch.device], int] | None = None,
    estimate: Callable[..., PerImageMemory] | None = None,
) -> int:
    """``config.batch_size`` when it is a number; for "auto" the batch size this backend fits on its device.

    "auto" is 1 on the CPU, for the onnxruntime and tensorrt backends and without a fixed image size
    (``image_size=None``); on CUDA it is :func:`batch_size_for_memory` of the free memory and
    :func:`estimate_per_image_memory`. An estimate that fails (a network the meta device cannot run) gives 1,
    with a warning. ``free_bytes(device)`` and ``estimate(...)`` replace the CUDA query and the trace (tests).
    """
    if config.batch_size != AUTO_BATCH:
        return int(config.batch_size)
    device = torch.device(backend.device)
    if device.type != "cuda" or getattr(backend, "name", None) != "torch" or config.image_size is None:
        return 1
    try:
        per_image = (estimate or estimate_per_image_memory)(
            backend.network,
            backend.encoder,
            backend.geometry,
            backend.dtype,
            device,
            config.image_size,
            config.ensemble_size,
            context_shape,
        )
    except Exception as err:
        logger.warning(
            "batch_size='auto': could not estimate the memory per image (%s: %s); using 1", type(err).__name__, err
        )
        return 1
    free = (free_bytes or cuda_free_bytes)(device)
    batch = batch_size_for_memory(free, per_image.total)
    logger.info(
        "batch_size='auto': %d images (%.0f MiB free, %.0f MiB per image: %s)",
        batch,
        free / 2**20,
        per_image.total / 2**20,
        per_image,
    )
    return batch


def cuda_free_bytes(device: torch.device) -> int:
    """Free device memory plus what torch's caching allocator holds unused (it reuses that first)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
