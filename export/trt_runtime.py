"""Running a TensorRT engine on torch CUDA tensors: ``execute_async_v3`` on torch's current stream, optionally
replayed from a CUDA graph captured per input shape. Written against the TensorRT 10 and 11 Python API.
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


class TrtEngine:
    """One deserialized engine and its execution context; runs on torch's current stream."""

    def __init__(self, plan: bytes, cuda_graph: bool) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[Any, dict[str, torch.Tensor]]] = {}

    def _bind(self, tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        for name in self.inputs:
            t = tensors[name]
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        return outs

    def __call__(self, feeds: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        feeds = {n: feeds[n].to(device=device, dtype=self.dtypes[n]).contiguous() for n in self.inputs}
        stream = torch.cuda.current_stream(device)
        if not self.cuda_graph:
            outs = self._bind(feeds, device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return outs
        key = tuple(tuple(t.shape) for t in feeds.values())
        if key not in self._graphs:
            static = {n: t.clone() for n, t in feeds.items()}
            outs = self._bind(static, device)
            self.context.execute_async_v3(stream.cuda_stream)  # flush shape-dependent setup before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream)
            self._graphs[key] = (graph, {**static, **outs})
        graph, buffers = self._graphs[key]
        for n, t in feeds.items():
            buffers[n].copy_(t)
        graph.replay()  # the captured kernels hold this shape's buffers; the context's bindings do not matter
        return {n: buffers[n].clone() for n in self.outputs}
