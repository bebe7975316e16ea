"""Building a TensorRT engine from an ONNX graph: a strongly typed network, one optimisation profile, a timing cache.

Networks are strongly typed, so precision comes from the ONNX graph (fp32, or fp16/bf16 with fp32 GroupNorm and
softmax); TensorRT 11 is strongly typed only, and the flag is passed to TensorRT 10 only.
"""

from __future__ import annotations

from pathlib import Path

from dift_fast.atomic import write_atomic

from .trt_engines import Profile
from .trt_runtime import import_tensorrt

__all__ = ["build_engine"]


def build_engine(onnx_path: Path, profile: Profile, timing_cache: Path, *, workspace_bytes: int | None = None) -> bytes:
    """Parse ``onnx_path`` (external data beside it) into a strongly typed network and build a serialized plan."""
    trt = import_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 11:  # TensorRT 11 is always strongly typed (the flag is deprecated and ignored)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
