"""Typed options of the accelerated backends: one frozen dataclass per backend, validated with the field named.

``DiftExtractor.from_pretrained(..., backend="onnxruntime", backend_options=OrtOptions(export_dir="exports/spair"))``;
a plain dict is accepted too and validated into the backend's dataclass. ``to_dict()`` gives the JSON-ready form
that ``dift-fast info`` shows. The torch backend has no options.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BackendOptions", "OrtOptions", "TrtOptions", "backend_options_for"]

# Keys accepted in a dict for backward compatibility: old name -> field.
_RENAMED = {"engine_dir": "export_dir"}


def _fail(cls: type, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls.__name__}.{name}={value!r} is invalid: {allowed}")


def _check_bool(obj: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            _fail(type(obj), name, getattr(obj, name), "allowed are True and False")


def _check_int(obj: Any, name: str, minimum: int, optional: bool = True) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(type(obj), name, value, f"allowed are integers >= {minimum}" + (" or None" if optional else ""))


def _normalise_path(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        _fail(type(obj), name, value, "allowed is a folder path (str or os.PathLike) or None")
    object.__setattr__(obj, name, os.fspath(value))


class _Options:
    """Shared by the options dataclasses: dict conversion with unknown keys refused."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Validate a plain dict into the options (``engine_dir`` is read as ``export_dir``, with a warning)."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: options must be a dict or {cls.__name__}, got {type(data).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        data = dict(data)
        for old, new in _RENAMED.items():
            if old in data:
                warnings.warn(f"backend option {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=3)
                if new in data:
                    raise ValueError(f"{cls.__name__}: give {new!r} only (not also its old name {old!r})")
                data[new] = data.pop(old)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; options are {fields}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (round-trips through :meth:`from_dict`)."""
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class OrtOptions(_Options):
    """Options of the ``onnxruntime`` backend."""

    export_dir: str | None = None  # ONNX export folder (`dift-fast export --out DIR`); exported there when it has none
    no_build: bool = False  # raise instead of exporting when there is no export
    provider: Literal["cpu", "cuda", "tensorrt"] | None = None  # execution provider; None: cpu, or cuda on CUDA
    intra_op_threads: int | None = None  # CPU threads per session; None: onnxruntime's choice
    fp16: bool = False  # TensorRT execution provider only: allow fp16 kernels for an fp32 graph
    cuda_graph: bool = False  # CUDA/TensorRT EP: replay the run from a CUDA graph; needs a static-size export_dir
    engine_cache_dir: str | None = None  # TensorRT EP engine and timing cache; None: <export_dir>/ort_trt_cache
    check_weights: bool = True  # refuse an export made from other weights than the model's

    def __post_init__(self) -> None:
        _normalise_path(self, "export_dir")
        _normalise_path(self, "engine_cache_dir")
        _check_bool(self, "no_build", "fp16", "cuda_graph", "check_weights")
        if self.provider not in (None, "cpu", "cuda", "tensorrt"):
            _fail(type(self), "provider", self.provider, "allowed are 'cpu', 'cuda', 'tensorrt' or None")
        _check_int(self, "intra_op_threads", 1)
        if self.cuda_graph and self.provider == "cpu":
            _fail(type(self), "cuda_graph", self.cuda_graph, "CUDA graphs need provider 'cuda' or 'tensorrt', not 'cpu'")
        if self.cuda_graph and self.export_dir is None:
            # Without export_dir the backend exports a dynamic-size graph, which onnxruntime cannot capture.
            _fail(type(self), "cuda_graph", self.cuda_graph, "CUDA graphs need a static-size export: make one with "
                  "`dift-fast export --out DIR` (without --dynamic-size) and pass export_dir=DIR")


@dataclass(frozen=True)
class TrtOptions(_Options):
    """Options of the ``tensorrt`` backend."""

    export_dir: str | None = None  # ONNX export folder; engines go to <export_dir>/tensorrt/; exported there if empty
    no_build: bool = False  # raise when the export or an engine is missing or stale instead of building it
    max_batch: int | None = None  # images per engine call (UNet profile: max_batch x E rows); None: the batch size
    opt_batch: int | None = None  # images the engines are tuned for; None: max_batch
    latent_range: tuple[int, int, int] | None = None  # dynamic exports: (min, opt, max) latent side; None: the
    #   extractor's image size (or 32, 96, 128 when it keeps each image's size)
    cuda_graph: bool = False  # replay each input shape from a captured CUDA graph
    workspace_gb: float | None = None  # TensorRT builder workspace limit in GiB; None: TensorRT's default
    check_weights: bool = True  # refuse an export made from other weights than the model's

    def __post_init__(self) -> None:
        _normalise_path(self, "export_dir")
        _check_bool(self, "no_build", "cuda_graph", "check_weights")
        _check_int(self, "max_batch", 1)
        _check_int(self, "opt_batch", 1)
        if self.opt_batch is not None and self.max_batch is not None and self.opt_batch > self.max_batch:
            _fail(type(self), "opt_batch", self.opt_batch, f"must not exceed max_batch={self.max_batch}")
        if self.latent_range is not None:
            r = self.latent_range
            if (not isinstance(r, (tuple, list)) or len(r) != 3
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in r)
                    or not r[0] <= r[1] <= r[2]):
                _fail(type(self), "latent_range", r, "allowed is (min, opt, max) positive integers, min <= opt <= max")
            object.__setattr__(self, "latent_range", tuple(r))
        if self.workspace_gb is not None and (
                not isinstance(self.workspace_gb, (int, float)) or isinstance(self.workspace_gb, bool)
                or not self.workspace_gb > 0):
            _fail(type(self), "workspace_gb", self.workspace_gb, "allowed is a positive number of GiB or None")


BackendOptions = OrtOptions | TrtOptions
OPTIONS_TYPES: dict[str, type] = {"onnxruntime": OrtOptions, "tensorrt": TrtOptions}


def backend_options_for(
    backend: str, options: BackendOptions | dict[str, Any] | None = None, **overrides: Any
) -> BackendOptions | None:
    """The validated options of ``backend``: from its dataclass, a dict, or keywords (None for ``torch``).

    Raises:
        ValueError: options for the torch backend, options of another backend, or an invalid or unknown field.
    """
    kind = OPTIONS_TYPES.get(backend)
    if kind is None:
        if options or overrides:
            raise ValueError(f"backend {backend!r} takes no options (got {options or overrides}); options apply to "
                             f"{', '.join(OPTIONS_TYPES)}")
        return None
    if isinstance(options, (OrtOptions, TrtOptions)):
        if not isinstance(options, kind):
            raise ValueError(f"backend {backend!r} takes {kind.__name__}, got {type(options).__name__}")
        return kind.from_dict({**options.to_dict(), **overrides}) if overrides else options
    return kind.from_dict({**(options or {}), **overrides})
