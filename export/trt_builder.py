"""Building a TensorRT engine from an ONNX graph: a strongly typed network, one optimisation profile, a timing cache.

Networks are strongly typed, so precision comes from the ONNX graph (fp32, or fp16/bf16 with fp32 GroupNorm);
TensorRT 11 is strongly typed only, and the flag is passed to TensorRT 10 only.

Every builder call that reports failure by its return value is checked. The timing cache only speeds builds up: a
cache file TensorRT cannot read, or one made on another GPU or TensorRT version (``set_timing_cache`` refuses it),
is reported and replaced after the build, never trusted; failing to create an empty cache is an error. After the
build, a cache another process wrote meanwhile is merged with this build's (``ITimingCache.combine``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dift_fast.atomic import write_atomic

from .trt_engines import Profile
from .trt_runtime import import_tensorrt

__all__ = ["build_engine"]

logger = logging.getLogger(__name__)


def _required(value: Any, what: str) -> Any:
    if value is None:
        raise RuntimeError(f"TensorRT could not {what} (see the TensorRT log above)")
    return value


def _attach_timing_cache(config: Any, path: Path) -> tuple[Any, bytes]:
    """Give ``config`` the timing cache in ``path`` when TensorRT accepts it, else an empty one.

    Returns the cache (it must outlive the build) and the file's bytes as read (to notice a concurrent writer).
    """
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache, blob
        reason = ("TensorRT cannot read it" if cache is None
                  else "it was made on another GPU or TensorRT version (set_timing_cache refused it)")
        logger.warning("timing cache %s is not used: %s; building without it (it is replaced after the build)",
                       path, reason)
    cache = _required(config.create_timing_cache(b""), "create an empty timing cache")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT refused its own empty timing cache (set_timing_cache returned False)")
    return cache, blob


def _save_timing_cache(config: Any, path: Path, read: bytes) -> None:
    """Write this build's timing cache, merged with one another process wrote to ``path`` since it was read."""
    built = config.get_timing_cache()
    if built is None:
        logger.warning("TensorRT returned no timing cache after the build; %s is left as it was", path)
        return
    data = bytes(built.serialize())
    now = path.read_bytes() if path.is_file() else b""
    if now and now != read:  # another build wrote it meanwhile: keep both builds' timings
        merged = config.create_timing_cache(now)
        if merged is not None and merged.combine(built, ignore_mismatch=False):
            data = bytes(merged.serialize())
        else:
            logger.warning("could not combine the timing cache another build wrote to %s with this one (%s); "
                           "keeping this build's", path, "unreadable" if merged is None else "combine returned False")
    write_atomic(path, data)


def build_engine(onnx_path: Path, profile: Profile, timing_cache: Path, *, workspace_bytes: int | None = None) -> bytes:
    """Parse ``onnx_path`` (external data beside it) into a strongly typed network and build a serialized plan."""
    trt = import_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = _required(trt.Builder(log), "create a builder (is a CUDA GPU visible?)")
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 11:  # TensorRT 11 is always strongly typed (the flag is deprecated and ignored)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = _required(builder.create_network(flags), "create a network definition")
    parser = _required(trt.OnnxParser(network, log), "create an ONNX parser")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(profile.shapes):
        raise RuntimeError(f"{onnx_path} has inputs {sorted(inputs)} but the profile covers {sorted(profile.shapes)}"
                           " (an export from another dift-fast version?); export again")
    config = _required(builder.create_builder_config(), "create a builder config")
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    opt_profile = _required(builder.create_optimization_profile(), "create an optimisation profile")
    for name, (lo, opt, hi) in profile.shapes.items():
        try:
            opt_profile.set_shape(name, lo, opt, hi)
        except RuntimeError as err:  # the Python binding raises where the C++ API returns False
            raise RuntimeError(f"TensorRT refused the profile of input {name} (min {lo}, opt {opt}, max {hi}): "
                               f"{err}") from None
    if config.add_optimization_profile(opt_profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile {profile.to_dict()} for {onnx_path}")
    cache, read = _attach_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    _save_timing_cache(config, timing_cache, read)
    del cache  # held until here: the timing cache must outlive the build
    return bytes(plan)
