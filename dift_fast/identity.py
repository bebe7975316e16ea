"""One feature identity: what decides the numbers of a feature map, taken from what actually ran.

Two feature maps are interchangeable only when their identities are equal. Every place that keeps or compares
features uses this one identity: the feature store (resume refuses a store made with another identity), the
evaluation cache (one sub-folder per identity), feature files (``dift-fast extract`` writes it into the
safetensors metadata), ``dift-fast match-pairs`` outputs and FAISS indexes (``index query`` refuses a feature file
whose identity differs from the index's).

What is in it, and why:

- the model: its backbone, a sha256 of the content of its weight files (a fine-tune with the same shapes differs)
  and the noise schedule (the ᾱ_t the features are noised with);
- the extraction settings that change the numbers: ``t``, the block, the ensemble size E, the prompt, the seed,
  the image size;
- what ran: the backend (torch, onnxruntime, tensorrt: different graphs and kernels, which at reduced precision
  differ by ~1e-3 relative, far above float rounding), the dtype of the graph that actually ran (the backend's, not
  the configured one: an export's dtype wins over ``--dtype``), and the device type (``cpu`` or ``cuda``: cuDNN
  runs fp32 convolutions in TF32 on recent GPUs unless told not to, ~1e-3 relative from the CPU's fp32);
- the noise-contract version (:data:`dift_fast.noise.CONTRACT_VERSION`);
- ``"tf32": true`` when the torch backend ran fp32 on CUDA with TF32 allowed (``DiftConfig.tf32``): a 10-bit
  mantissa in every convolution and matmul, ~1e-3 relative from fp32, as far from fp32 as another dtype. Recorded
  only when true, so the identities of everything computed without TF32 are what they were before the field.

Left out, because by the noise contract they do not change the features beyond float rounding: batch size
(``"auto"`` included), batch position, the device *index* (``cuda:0`` or ``cuda:1``), worker counts, file names
and the model's name (a moved or renamed model folder with the same weights is the same model). Also left out,
because they choose among kernels that compute the same thing in the same dtype, which moves the features by the
compute dtype's rounding (as the batch size does on CUDA, where it changes the cuBLAS/cuDNN algorithms):

- ``compile`` (Inductor fuses elementwise chains and reorders reductions: <= 1e-5 relative in fp32, tested);
- CUDA graphs (they replay the kernels they captured: bit-identical to the calls they record);
- channels-last memory format and ``cudnn.benchmark`` (other convolution algorithms, same dtype);
- the attention kernel (SDPA's fused kernels or the classic processor: fp32 scores in both, fp16 output).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .noise import CONTRACT_VERSION

__all__ = [
    "IDENTITY_FORMAT",
    "ModelIdentity",
    "config_identity",
    "describe_diff",
    "dtype_name",
    "extractor_identity",
    "feature_identity",
    "identity_digest",
    "model_identity_of",
    "ran_graph_dtype",
    "ran_tf32",
]

IDENTITY_FORMAT = "dift-fast-feature-identity/1"
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class ModelIdentity:
    """The model part of a feature identity (what ``Backbone.model_identity()`` returns, as a dataclass).

    Attributes:
        backbone: which network family computes the features (``"sd"``, ``"adm"``, ...).
        content_hash: sha256 (hex) of the content of the weights the features depend on.
        schedule: the noise schedule's parameters that decide ᾱ_t (JSON-ready).
    """

    backbone: str
    content_hash: str
    schedule: dict[str, Any]

    @classmethod
    def of(cls, value: ModelIdentity | Mapping[str, Any]) -> ModelIdentity:
        """A :class:`ModelIdentity` from itself or a dict with the keys ``backbone``, ``content_hash``, ``schedule``."""
        if isinstance(value, ModelIdentity):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a model identity is a ModelIdentity or a dict, got {type(value).__name__}")
        missing = [k for k in ("backbone", "content_hash", "schedule") if k not in value]
        if missing:
            raise ValueError(f"model identity {dict(value)!r} lacks {missing}")
        if not isinstance(value["backbone"], str) or not value["backbone"]:
            raise ValueError(f"model identity: backbone must be a non-empty string, got {value['backbone']!r}")
        if not isinstance(value["content_hash"], str) or len(value["content_hash"]) != 64:
            raise ValueError(f"model identity: content_hash must be a sha256 hex digest, got {value['content_hash']!r}")
        return cls(value["backbone"], value["content_hash"], _jsonable(value["schedule"]))

    def to_dict(self) -> dict[str, Any]:
        """The dict form ``extractor.model_identity()`` returns."""
        return asdict(self)


def model_identity_of(extractor: Any) -> ModelIdentity:
    """The model identity of a loaded extractor (``extractor.model_identity()``, its backbone's by content)."""
    return ModelIdentity.of(extractor.model_identity())


def dtype_name(dtype: torch.dtype) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a torch dtype."""
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"features are computed in fp32, bf16 or fp16, not {dtype}")
    return _DTYPE_NAMES[dtype]


def feature_identity(
    model: ModelIdentity | Mapping[str, Any],
    *,
    t: int,
    block: int,
    ensemble_size: int,
    prompt: str,
    seed: int,
    image_size: tuple[int, int] | None,
    backend: str,
    graph_dtype: str,
    device_type: str,
    tf32: bool = False,
) -> dict[str, Any]:
    """The identity of features computed with these settings (a JSON-ready dict; see the module docstring).

    Args:
        model: a :class:`ModelIdentity` or the dict ``extractor.model_identity()`` returns.
        t, block, ensemble_size, prompt, seed, image_size: the extraction settings (``block`` is ``up_ft_index``).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        graph_dtype: dtype of the graph that ran (``"fp32"``, ``"bf16"``, ``"fp16"``).
        device_type: ``"cpu"`` or ``"cuda"`` (not the index).
        tf32: fp32 ran with TF32 (:func:`ran_tf32`); recorded only when True.
    """
    model = ModelIdentity.of(model)
    if graph_dtype not in _DTYPE_NAMES.values():
        raise ValueError(f"graph_dtype must be one of {sorted(_DTYPE_NAMES.values())}, got {graph_dtype!r}")
    if ":" in device_type:
        raise ValueError(f"device_type is 'cpu' or 'cuda', not a device with an index ({device_type!r})")
    if tf32 and graph_dtype != "fp32":
        raise ValueError(f"tf32=True describes fp32 graphs, not {graph_dtype}")
    identity = {
        "identity_format": IDENTITY_FORMAT,
        "backbone": model.backbone,
        "model_sha256": model.content_hash,
        "schedule": model.schedule,
        "t": int(t),
        "block": int(block),
        "ensemble_size": int(ensemble_size),
        "prompt": prompt,
        "seed": int(seed),
        "image_size": None if image_size is None else [int(v) for v in image_size],
        "backend": backend,
        "graph_dtype": graph_dtype,
        "device_type": device_type,
        "noise_contract": CONTRACT_VERSION,
    }
    if tf32:
        identity["tf32"] = True
    return identity


def ran_tf32(backend: str, graph_dtype: str, device_type: str, config: Any) -> bool:
    """Whether the features were computed with TF32: the torch backend, fp32, on CUDA, with ``config.tf32``.

    (The accelerated backends are told nothing about TF32 by dift-fast; their backend name already separates
    their identities from torch's.)
    """
    return backend == "torch" and graph_dtype == "fp32" and device_type == "cuda" and bool(getattr(config, "tf32",
                                                                                                     False))


def ran_graph_dtype(backend: str, dtype: str, options: Any = None) -> str:
    """The dtype a backend's kernels run in, given the dtype of its graph or modules and its options.

    onnxruntime's TensorRT execution provider with ``fp16=True`` runs an fp32 graph in fp16 kernels.
    """
    if (
        backend == "onnxruntime"
        and getattr(options, "provider", None) == "tensorrt"
        and getattr(options, "fp16", False)
    ):
        return "fp16"
    return dtype


def extractor_identity(extractor: Any, *, t: int | None = None, block: int | None = None) -> dict[str, Any]:
    """The feature identity of what ``extractor`` computes (reads its model's weights once; cached after).

    ``t`` and ``block`` name one cell of a grid (``extractor.extract_grid``) instead of the config's t and
    block: a cell's features equal those of an extractor configured for it, so they share its identity.
    """
    config = extractor.config
    graph_dtype = ran_graph_dtype(
        extractor.backend.name, dtype_name(extractor.backend.dtype), getattr(extractor, "backend_options", None)
    )
    device_type = torch.device(extractor.device).type
    return feature_identity(
        model_identity_of(extractor),
        t=config.t if t is None else t,
        block=config.up_ft_index if block is None else block,
        ensemble_size=config.ensemble_size,
        prompt=config.prompt,
        seed=config.seed,
        image_size=config.image_size,
        backend=extractor.backend.name,
        graph_dtype=graph_dtype,
        device_type=device_type,
        tf32=ran_tf32(extractor.backend.name, graph_dtype, device_type, config),
    )


def config_identity(
    config: Any, device: str | None = None, backend_options: Any = None, *, t: int | None = None,
    block: int | None = None,
) -> dict[str, Any]:
    """The feature identity an extractor built from ``config`` on ``device`` will have, without loading it.

    For runs that must know the identity before (or without) loading a model: the parent of a multi-device store
    run, ``match-pairs`` when every image is done. The backbone names its weights by content without loading them
    (``Backbone.model_identity``: hashed once, cached) and, for an accelerated backend given an existing export,
    that export's dtype is the one that will run. Whoever later loads the extractor
    checks :func:`extractor_identity` against it, so a wrong prediction is refused rather than mixed in.
    ``t`` and ``block`` name one cell of a grid, as in :func:`extractor_identity`.
    """
    from .backbones.registry import backbone_for
    from .extractor import resolve_device, resolve_dtype

    dev = torch.device(device) if device else resolve_device(config.device)
    graph_dtype = dtype_name(resolve_dtype(config.dtype, dev))
    export_dir = getattr(backend_options, "export_dir", None)
    if config.backend != "torch" and export_dir is not None:
        manifest = Path(export_dir) / "manifest.json"  # an existing export's dtype wins over the configured one
        if manifest.is_file():
            try:
                graph_dtype = str(json.loads(manifest.read_text())["dtype"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # the backend refuses the export with its own message when it loads it
    ran = ran_graph_dtype(config.backend, graph_dtype, backend_options)
    return feature_identity(
        backbone_for(config).model_identity(),
        t=config.t if t is None else t,
        block=config.up_ft_index if block is None else block,
        ensemble_size=config.ensemble_size,
        prompt=config.prompt,
        seed=config.seed,
        image_size=config.image_size,
        backend=config.backend,
        graph_dtype=ran,
        device_type=dev.type,
        tf32=ran_tf32(config.backend, ran, dev.type, config),
    )


def identity_digest(identity: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of an identity (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], *, old_name: str = "store has", new_name: str = "this run"
) -> str:
    """``key: store has X, this run Y`` for every key whose value differs (nested dicts by dotted keys)."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))
    return "; ".join(
        f"{k}: {old_name} {_show(a.get(k, _MISSING))}, {new_name} {_show(b.get(k, _MISSING))}" for k in keys
    )


_MISSING = object()


def _show(value: Any) -> str:
    return "nothing" if value is _MISSING else repr(value)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))
