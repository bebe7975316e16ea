"""The backend protocol: what runs the VAE encoder and the truncated UNet.

Noise generation, prompt encoding and the ensemble reduction stay in the extractor, so every backend sees the
same inputs (spec §3: features do not depend on the backend). ``torch`` is built in; ``onnxruntime`` and
``tensorrt`` live in ``dift_fast.export`` and are found through the ``dift_fast.backends`` entry-point group; their
typed options are in :mod:`dift_fast.backend_options`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from .backend_options import BackendOptions
from .geometry import NetworkGeometry
from .unet import TruncatedUNet, VaeEncoder

__all__ = ["TORCH_DTYPES", "Backend", "TorchBackend", "create_backend"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Backend(Protocol):
    """Runs the two networks. Inputs and outputs are torch tensors on ``device``."""

    name: str
    device: torch.device
    dtype: torch.dtype  # the dtype ``features`` wants its latents in
    geometry: NetworkGeometry  # latent and feature sizes of the networks it runs

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] float32 in [-1, 1] -> posterior (mean, std), each [N, 4, H/8, W/8] float32."""
        ...

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        """x_t [N, 4, h, w] (``dtype``), t, prompt embeddings [N, 77, D] -> up-block feature [N, C, h', w']."""
        ...


class TorchBackend:
    """Eager PyTorch: the reference backend, on CPU or CUDA, in fp32, bf16 or fp16."""

    name = "torch"

    def __init__(self, unet: TruncatedUNet, vae: VaeEncoder, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self.geometry = NetworkGeometry.of(unet, vae)
        self.unet = unet.to(device=device, dtype=dtype)
        self.vae = vae.to(device=device, dtype=dtype)
        if dtype == torch.float16:
            # SD 2.1's attention overflows in fp16 unless scores and softmax run in fp32 (config upcast_attention);
            # diffusers' classic processor honours that flag, the SDPA one does not on every device.
            from diffusers.models.attention_processor import AttnProcessor

            processor = AttnProcessor()
            for module in self.unet.modules():
                if hasattr(module, "set_processor"):
                    module.set_processor(processor)

        self._timesteps: dict[int, torch.Tensor] = {}

    def _timestep(self, t: int) -> torch.Tensor:
        """A device tensor per timestep, made once: ``torch.tensor(..., device=cuda)`` per call would copy from
        pageable host memory, which waits for the stream to drain (a host sync per micro-batch)."""
        tensor = self._timesteps.get(int(t))
        if tensor is None:
            tensor = self._timesteps[int(t)] = torch.tensor([int(t)], dtype=torch.int64, device=self.device)
        return tensor

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # non_blocking: a host tensor is staged by the copy itself, with no wait for the stream to drain
        mean, std = self.vae(images.to(self.device, non_blocking=True).to(self.dtype))
        return mean.float(), std.float()

    @torch.inference_mode()
    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        return self.unet(latents.to(self.device, self.dtype), self._timestep(timestep),
                         context.to(self.device, self.dtype))


_FACTORIES: dict[str, Callable[..., Backend]] = {}
ENTRY_POINT_GROUP = "dift_fast.backends"


def _factory(name: str) -> Callable[..., Backend]:
    if name not in _FACTORIES:
        # Accelerated backends (dift_fast.export) are found through entry points, so this package never imports them.
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                _FACTORIES[name] = ep.load()
    if name not in _FACTORIES:
        known = sorted({"torch", *_FACTORIES, *(ep.name for ep in _entry_points())})
        raise ValueError(f"backend {name!r} is not available; known backends: {', '.join(known)}")
    return _FACTORIES[name]


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def create_backend(name: str, components: Any, device: torch.device, dtype: torch.dtype,
                   options: BackendOptions | None = None, *, config: Any = None) -> Backend:
    """Build the backend ``name`` for ``components``, with its validated options (None for ``torch``).

    The torch backend needs the UNet and VAE weights and loads them when ``components`` came without them; an
    accelerated backend loads them only when it has to (to export, or to check an export against the weights once).
    ``config`` (the extractor's :class:`~dift_fast.config.DiftConfig`) tells an accelerated backend what it will
    run: tensorrt sizes its engine profiles from the batch size, ensemble size and image size, and both ONNX
    backends refuse a static export made for another image size.
    """
    if name == "torch":
        components.ensure_networks()
        return TorchBackend(components.unet, components.vae, device, dtype)
    factory = _factory(name)
    if config is None:
        return factory(components, device, dtype, options)
    return factory(components, device, dtype, options, config=config)
