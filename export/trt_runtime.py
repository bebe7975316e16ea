"""Running a TensorRT engine on torch tensors: ``execute_async_v3`` on torch's current stream of the engine's
device, optionally replayed from a CUDA graph captured per input shape. Written against the TensorRT 10 and 11
Python API.

Every call that reports failure by its return value (``deserialize_cuda_engine``, ``create_execution_context``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) is checked and fails with what was asked and
what the engine admits. The caller holds the device guard (:class:`.trt_backend.TrtBackend` runs every engine call
under ``torch.cuda.device(its device)``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TrtEngine", "import_tensorrt"]


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeError("the tensorrt backend needs TensorRT 10 or 11: pip install tensorrt (and a CUDA GPU)") \
            from None
    return trt


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64, trt.int32: torch.int32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]


def _stream_handle(device: torch.device) -> int:
    """The handle of torch's current stream on ``device`` (0, the legacy default stream, off CUDA)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


class TrtEngine:
    """One deserialized engine and its execution context; runs on torch's current stream of ``device``."""

    def __init__(self, plan: bytes, cuda_graph: bool, name: str = "engine") -> None:
        trt = import_tensorrt()
        self.trt, self.name = trt, name
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the {name} engine (corrupt, or built by another "
                               "TensorRT version); delete the plan or run without --no-build to rebuild it")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            need = getattr(self.engine, "device_memory_size_v2", getattr(self.engine, "device_memory_size", None))
            raise RuntimeError(f"TensorRT could not create an execution context for the {name} engine (it needs "
                               f"{need} bytes of device memory for its largest profile shape); free GPU memory or "
                               "build with a smaller max_batch / latent_range")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[Any, dict[str, torch.Tensor]]] = {}

    def _profile_of(self, name: str) -> str:
        try:
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            return f"{tuple(lo)}..{tuple(hi)}"
        except Exception:  # only for the message
            return "(unknown)"

    def _bind(self, tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        for name in self.inputs:
            t = tensors[name]
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise RuntimeError(f"the {self.name} engine refused input {name} of shape {tuple(t.shape)}: its "
                                   f"profile admits {self._profile_of(name)} (rebuild with a larger max_batch or "
                                   "latent_range, or a dynamic-size export for other image sizes)")
            if not self.context.set_tensor_address(name, t.data_ptr()):
                raise RuntimeError(f"the {self.name} engine refused the address of input {name}")
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"the {self.name} engine could not infer the shape of output {name} ({shape}) from "
                                   f"inputs {[tuple(tensors[n].shape) for n in self.inputs]}")
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
            if not self.context.set_tensor_address(name, outs[name].data_ptr()):
                raise RuntimeError(f"the {self.name} engine refused the address of output {name}")
        return outs

    def _execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execute_async_v3 of the {self.name} engine failed (see the TensorRT log)")

    def __call__(self, feeds: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        # non_blocking: a host tensor is staged by the copy itself, with no wait for the stream to drain
        feeds = {n: feeds[n].to(device=device, dtype=self.dtypes[n], non_blocking=True).contiguous()
                 for n in self.inputs}
        if not self.cuda_graph:
            outs = self._bind(feeds, device)
            self._execute(_stream_handle(device))
            return outs
        key = tuple(tuple(t.shape) for t in feeds.values())
        if key not in self._graphs:
            static = {n: t.clone() for n, t in feeds.items()}
            outs = self._bind(static, device)
            self._execute(_stream_handle(device))  # flush shape-dependent setup before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._execute(_stream_handle(device))
            self._graphs[key] = (graph, {**static, **outs})
        graph, buffers = self._graphs[key]
        for n, t in feeds.items():
            buffers[n].copy_(t)
        graph.replay()  # the captured kernels hold this shape's buffers; the context's bindings do not matter
        return {n: buffers[n].clone() for n in self.outputs}
