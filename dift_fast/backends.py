"""The backend protocol: what runs a backbone's encoder (if it has one) and its truncated network.

Noise generation, prompt encoding and the ensemble reduction stay in the extractor, so every backend sees the
same inputs (spec §3: the noise does not depend on the backend). ``torch`` is built in; ``onnxruntime`` and
``tensorrt`` live in ``dift_fast.export`` and are found through the ``dift_fast.backends`` entry-point group; their
typed options are in :mod:`dift_fast.backend_options`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .backend_options import BackendOptions
from .geometry import NetworkGeometry
from .transfer import to_device

__all__ = ["TORCH_DTYPES", "Backend", "TorchBackend", "create_backend", "placed_copy"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Backend(Protocol):
    """Runs the encoder and the network. Inputs and outputs are torch tensors on ``device``."""

    name: str
    device: torch.device
    dtype: torch.dtype  # the dtype ``features`` wants its diffusion-space samples in
    geometry: NetworkGeometry  # diffusion-space and feature sizes of the networks it runs

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] float32 in [-1, 1] -> posterior (mean, std), each [N, c, H/f, W/f] float32.

        Only called for a backbone with an encoder (SD's VAE: c = 4, f = 8).
        """
        ...

    def features(self, latents: torch.Tensor, timestep: int, context: torch.Tensor | None) -> torch.Tensor:
        """x_t [N, c, h, w] (``dtype``), t, prompt embeddings [N, 77, D] (None: unconditional) -> [N, C, h', w']."""
        ...


def placed_copy(module: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """``module`` on ``device`` in ``dtype`` (floating-point tensors only), without changing ``module``.

    The copy shares every tensor that is already in place (nothing is duplicated on the CPU for a CPU float32
    copy); the others are converted one at a time into the copy. The caller's module keeps its device and dtype.
    """
    memo: dict[int, Any] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) in memo:
            continue
        moved = tensor.detach().to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point()
                                   else None)
        memo[id(tensor)] = nn.Parameter(moved, requires_grad=False) if isinstance(tensor, nn.Parameter) else moved
    memo[id(memo)] = [module]  # keeps the originals alive while deepcopy relies on their ids
    return copy.deepcopy(module, memo)


class TorchBackend:
    """PyTorch: the reference backend, on CPU or CUDA, in fp32, bf16 or fp16; eager or compiled.

    It runs copies of the given modules placed on ``device`` in ``dtype`` (:func:`placed_copy`): the caller's
    modules are never moved or cast. What it does to be fast, each chosen so that the features stay those of the
    plain eager fp32 NCHW path within float rounding (tests in ``tests/test_fast_paths.py``):

    - channels-last (NHWC) weights and inputs on CUDA (``channels_last``), the layout cuDNN's fastest convolution
      kernels read (tensor cores); the features it returns are channels-last too and the ensemble mean reads them
      in that layout (:func:`dift_fast.ops.ensemble_reduce` returns contiguous NCHW);
    - ``cudnn.benchmark`` around the network calls when the shapes are fixed (``static_shapes``) and the user did
      not ask for deterministic algorithms (:mod:`dift_fast.run_flags`);
    - no TF32 in fp32 unless ``tf32`` (scoped to the calls the same way);
    - ``torch.compile`` of both networks with ``compile`` (:mod:`dift_fast.compiled`; CUDA graphs on CUDA with
      static shapes);
    - in fp16, SDPA's fused attention wherever torch runs it, diffusers' classic processor only where SDPA would
      fall back to its math kernel (:mod:`dift_fast.attention`).

    Args:
        network: the truncated network (``network(x_t, t, context)``).
        encoder: the encoder into the diffusion space (``images -> (mean, std)``), or None in pixel space.
        device, dtype: where and in what the networks run.
        compile: ``torch.compile`` the network and the encoder.
        tf32: allow TF32 in fp32 convolutions and matmuls on CUDA (changes the features by ~1e-3).
        channels_last: NHWC weights and inputs; None: on CUDA only.
        static_shapes: every call has the same image size (``DiftConfig.image_size`` is set): enables
            ``cudnn.benchmark`` and, with ``compile``, CUDA graphs on CUDA.
    """

    name = "torch"

    def __init__(self, network: nn.Module, encoder: nn.Module | None, device: torch.device,
                 dtype: torch.dtype, *, compile: bool = False, tf32: bool = False,
                 channels_last: bool | None = None, static_shapes: bool = False) -> None:
        from .attention import configure_attention
        from .compiled import CompiledCall, compile_mode

        self.device = torch.device(device)
        self.dtype = dtype
        self.geometry = NetworkGeometry.of(network, encoder)
        self.tf32 = bool(tf32)
        self.static_shapes = bool(static_shapes)
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.network = placed_copy(network, self.device, dtype).eval()
        self.encoder = placed_copy(encoder, self.device, dtype).eval() if encoder is not None else None
        if self.channels_last:
            for module in (self.network, self.encoder):
                if module is not None:
                    module.to(memory_format=torch.channels_last)  # 4-D weights only; the copies, not the caller's
        # fp16: the classic processor only where SDPA would run its math kernel (see dift_fast.attention)
        self.attention = configure_attention(self.network, self.device, dtype)
        self.compiled = bool(compile)
        mode = compile_mode(self.device, self.static_shapes) if compile else None
        self._network_call: Any = CompiledCall(self.network, mode) if compile else self.network
        self._encoder_call: Any = (CompiledCall(self.encoder, mode) if compile and self.encoder is not None
                                   else self.encoder)
        self.compile_mode = mode
        self._timesteps: dict[int, torch.Tensor] = {}

    def _timestep(self, t: int) -> torch.Tensor:
        """A device tensor per timestep, made once: ``torch.tensor(..., device=cuda)`` per call would copy from
        pageable host memory, which waits for the stream to drain (a host sync per micro-batch)."""
        tensor = self._timesteps.get(int(t))
        if tensor is None:
            tensor = self._timesteps[int(t)] = torch.tensor([int(t)], dtype=torch.int64, device=self.device)
        return tensor

    def _flags(self) -> Any:
        """TF32 and cuDNN autotuning for one call on CUDA (restored after it); nothing on the CPU."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from .run_flags import deterministic_requested, network_flags

        return network_flags(tf32=self.tf32, benchmark=self.static_shapes and not deterministic_requested())

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, in the compute dtype and the networks' memory format (host tensors: no wait)."""
        x = to_device(x, self.device).to(self.dtype)  # a host tensor through pinned memory (dift_fast.transfer)
        return x.contiguous(memory_format=self.memory_format) if x.ndim == 4 else x

    @property
    def unet(self) -> nn.Module:  # the SD-era name
        return self.network

    @property
    def vae(self) -> nn.Module | None:  # the SD-era name
        return self.encoder

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            raise RuntimeError("this backbone has no encoder: its diffusion space is the image itself")
        with self._flags():
            mean, std = self._encoder_call(self._input(images))
        # float32 and NCHW-contiguous: the noise kernels read the posterior in that layout
        return mean.float().contiguous(), std.float().contiguous()

    @torch.inference_mode()
    def features(
        self, latents: torch.Tensor, timestep: int, context: torch.Tensor | None, blocks: Sequence[int] | None = None
    ) -> torch.Tensor | dict[int, torch.Tensor]:
        """The feature block's output; with ``blocks``, ``{k: features}`` of each block from one network pass.

        The features are in the networks' memory format (channels-last on CUDA): same shape and values, other
        strides; :func:`dift_fast.ops.ensemble_reduce` reads either.
        """
        t = self._timestep(timestep)
        ctx = context.to(self.device, self.dtype) if context is not None else None
        x = self._input(latents)
        with self._flags():
            if blocks is None:
                return self._network_call(x, t, ctx)
            return self._network_call(x, t, ctx, blocks=blocks)


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

    The torch backend needs the network and encoder weights and loads them when ``components`` came without them;
    an accelerated backend loads them only when it has to (to export, or to check an export against the weights
    once). ``config`` (the extractor's :class:`~dift_fast.config.DiftConfig`) tells an accelerated backend what it
    will run: tensorrt sizes its engine profiles from the batch size, ensemble size and image size, and both ONNX
    backends refuse a static export made for another image size.
    """
    if name == "torch":
        components.ensure_networks()
        if config is None:
            return TorchBackend(components.network, components.encoder, device, dtype)
        return TorchBackend(components.network, components.encoder, device, dtype, compile=config.compile,
                            tf32=config.tf32, static_shapes=config.image_size is not None)
    if config is not None:
        torch_only = [f"{field}=True" for field in ("compile", "tf32") if getattr(config, field, False)]
        if torch_only:
            raise ValueError(f"{', '.join(torch_only)} applies to the torch backend only; backend {name!r} decides "
                             "its own kernels and precision: leave it False (--compile and --tf32 with --backend "
                             "torch)")
    factory = _factory(name)
    if config is None:
        return factory(components, device, dtype, options)
    return factory(components, device, dtype, options, config=config)
