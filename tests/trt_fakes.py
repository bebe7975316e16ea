"""A stand-in ``tensorrt`` module for CPU tests: the slice of the TensorRT 10/11 Python API dift-fast calls, with
each call that reports failure by its return value switchable to fail (``FakeTrt.fail``).

It runs nothing: engines "execute" by recording the call. It exists to test that every return value is checked and
every failure names what went wrong; the real API is exercised by the GPU tests.
"""

from __future__ import annotations

import types
from typing import Any


class FakeTrt(types.ModuleType):
    """``sys.modules["tensorrt"]`` for a test. ``fail`` holds the names of the calls that should fail."""

    def __init__(self, version: str = "10.9.0") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.fail: set[str] = set()
        self.calls: list[tuple] = []
        self.float32, self.float16, self.bfloat16, self.int64, self.int32 = "f32", "f16", "bf16", "i64", "i32"
        self.Logger = _Logger
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
        self.network_inputs = ["x_t", "timestep"]
        self.engine_io = {"x_t": ("in", "f32"), "timestep": ("in", "i64"), "features": ("out", "f32")}
        self.output_shape = (2, 3, 6, 8)
        self.profile_max = {"x_t": (8, 4, 6, 8)}
        trt = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, plan: bytes) -> Any:
                return None if "deserialize" in trt.fail else _Engine(trt)

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                trt.calls.append(("create_network", flags))
                return _Network(trt)

            def create_builder_config(self) -> Any:
                return _Config(trt)

            def create_optimization_profile(self) -> Any:
                return _Profile(trt)

            def build_serialized_network(self, network: Any, config: Any) -> Any:
                trt.calls.append(("build", config.cache))
                return None if "build" in trt.fail else b"plan"

        class OnnxParser:
            def __init__(self, network: Any, logger: Any) -> None:
                self.num_errors = 1 if "parse" in trt.fail else 0

            def parse_from_file(self, path: str) -> bool:
                return "parse" not in trt.fail

            def get_error(self, i: int) -> str:
                return "unsupported op Foo"

        self.Runtime, self.Builder, self.OnnxParser = Runtime, Builder, OnnxParser


class _Logger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        pass


class _Network:
    def __init__(self, trt: FakeTrt) -> None:
        self.num_inputs = len(trt.network_inputs)
        self._names = trt.network_inputs

    def get_input(self, i: int) -> Any:
        return types.SimpleNamespace(name=self._names[i])


class _Profile:
    def __init__(self, trt: FakeTrt) -> None:
        self.trt = trt

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        if "set_shape" in self.trt.fail:
            raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
        self.trt.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))


class _Cache:
    def __init__(self, trt: FakeTrt, blob: bytes) -> None:
        self.trt, self.blob = trt, blob

    def serialize(self) -> bytes:
        return self.blob

    def combine(self, other: _Cache, ignore_mismatch: bool) -> bool:
        self.trt.calls.append(("combine", self.blob, other.blob))
        if "combine" in self.trt.fail:
            return False
        self.blob = self.blob + b"+" + other.blob
        return True


class _Config:
    def __init__(self, trt: FakeTrt) -> None:
        self.trt, self.cache = trt, None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.trt.calls.append(("workspace", size))

    def add_optimization_profile(self, profile: Any) -> int:
        return -1 if "add_optimization_profile" in self.trt.fail else 0

    def create_timing_cache(self, blob: bytes) -> Any:
        if ("create_timing_cache" if blob else "create_empty_timing_cache") in self.trt.fail:
            return None
        return _Cache(self.trt, bytes(blob))

    def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> bool:
        if ("set_timing_cache" if cache.blob else "set_empty_timing_cache") in self.trt.fail:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> Any:
        # after a build the cache holds what the file held plus this build's timings
        return _Cache(self.trt, (self.cache.blob if self.cache else b"") + b"built")


class _Engine:
    def __init__(self, trt: FakeTrt) -> None:
        self.trt = trt
        self.names = list(trt.engine_io)
        self.num_io_tensors = len(self.names)
        self.device_memory_size_v2 = 123

    def create_execution_context(self) -> Any:
        return None if "create_execution_context" in self.trt.fail else _Context(self.trt)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return self.trt.engine_io[name][0]

    def get_tensor_dtype(self, name: str) -> str:
        return self.trt.engine_io[name][1]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        hi = self.trt.profile_max[name]
        return [(1, *hi[1:]), hi, hi]


class _Context:
    def __init__(self, trt: FakeTrt) -> None:
        self.trt = trt
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        hi = self.trt.profile_max.get(name)
        if "set_input_shape" in self.trt.fail or (hi is not None and shape[0] > hi[0]):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        return "set_tensor_address" not in self.trt.fail

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.trt.output_shape

    def execute_async_v3(self, stream: int) -> bool:
        self.trt.calls.append(("execute", stream, dict(self.shapes)))
        return "execute" not in self.trt.fail
