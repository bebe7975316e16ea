"""The export manifest: what a folder of exported graphs holds, how it was made, and how to check it.

A folder written by :func:`dift_fast.export.graphs.export_onnx` holds ``unet.onnx`` (optionally with
``unet.onnx.data``), ``vae_encoder.onnx`` (for a backbone with an encoder) and ``manifest.json``. The manifest is
written last, so a folder without one is an unfinished export. Its ``export_key`` hashes everything the graphs depend on (weights, block, dtype,
shapes, prompt, opset, tool versions): the same key means the same graphs, so export is skipped.

Loading a manifest checks every listed file against its recorded size and sha256 (through
:func:`dift_fast.hashing.file_sha256`, cached by path, size, mtime, ctime and inode: after the first load this
costs a ``stat`` per file), so a graph modified after export is never run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from dift_fast.atomic import write_atomic
from dift_fast.geometry import NetworkGeometry
from dift_fast.hashing import file_sha256

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ManifestError",
    "build_manifest",
    "file_sha256",
    "geometry_record",
    "load_manifest",
    "manifest_geometry",
    "stable_hash",
    "validate_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "dift-fast-onnx"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "export_key", "model", "up_ft_index", "dtype", "opset", "dynamic_size",
             "graphs", "files", "content_hash", "tool_versions")
_GRAPH_KEYS = ("file", "inputs", "outputs")


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not describe the files beside it."""


def stable_hash(data: Any) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (the rename is the commit point of an export)."""
    return write_atomic(Path(folder) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def geometry_record(geometry: NetworkGeometry) -> dict[str, Any]:
    """A :class:`NetworkGeometry` as the manifest records it (``graphs.unet.geometry``): every field."""
    record = geometry.to_dict()
    record["channels"] = geometry.feature_channels  # the name older manifests used
    return record


def manifest_geometry(manifest: dict[str, Any]) -> NetworkGeometry:
    """The :class:`NetworkGeometry` of an export's graphs, read from its manifest (no weights needed).

    A static export's geometry carries its image size: asking it for another size is an error naming that size.
    """
    static = manifest.get("image_size") if not manifest.get("dynamic_size") else None
    static_size = None if static is None else (int(static[0]), int(static[1]))
    record = manifest["graphs"]["unet"]["geometry"]
    if "latent_channels" in record:  # every field recorded (any backbone)
        return replace(NetworkGeometry.from_dict(record), static_image_size=static_size)
    vae = manifest["graphs"]["vae_encoder"]  # an older SD export: the encoder part from the VAE graph
    return NetworkGeometry(
        latent_channels=int(vae["outputs"][0]["shape"][1]) // 2,  # the moments: mean and logvar
        downsample_factor=int(vae["downsample_factor"]),
        scaling_factor=float(vae["scaling_factor"]),
        feature_channels=int(record["channels"]),
        num_downsamplers=int(record["num_downsamplers"]),
        num_upsamplers=int(record["num_upsamplers"]),
        static_image_size=static_size,
    )


def build_manifest(folder: Path, key: str, spec: dict[str, Any], graphs: dict[str, Any], *, config: Any,
                   tool_versions: dict[str, str], seconds: float) -> dict[str, Any]:
    """The manifest of the export in ``folder``: ``spec``, ``graphs``, and the size and sha256 of every file."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name != MANIFEST_NAME
                   and (p.name.startswith(("unet.onnx", "vae_encoder.onnx")) or p.name == "prompt_embedding.npy"))
    files = {n: {"size": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)} for n in names}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "export_key": key,
        **spec,
        "config": config.to_dict() if config is not None else None,
        "graphs": graphs,
        "files": files,
        "content_hash": stable_hash({k: v["sha256"] for k, v in sorted(files.items())}),
        "exporter": "torch.onnx.export(dynamo=False)",
        "tool_versions": tool_versions,
        "export_seconds": round(seconds, 2),
        "precision_notes": None if spec["dtype"] == "fp32" else
        f"weights and activations in {spec['dtype']}; GroupNorm statistics in fp32; attention in TensorRT's fusable "
        "form (scale on Q, softmax in the graph's dtype)",
    }
    problems = validate_manifest(manifest, folder, verify_hashes=False)  # the hashes were just computed
    if problems:  # a bug here, not a user error
        raise RuntimeError(f"export wrote an inconsistent manifest: {problems}")
    return manifest


def validate_manifest(manifest: Any, folder: Path | None = None, *, verify_hashes: bool = True) -> list[str]:
    """Problems with ``manifest`` (empty list: valid).

    Checks the schema; with ``folder``, that every listed file exists with its recorded size and (unless
    ``verify_hashes`` is False) its recorded sha256: read once per file version, then cached
    (:mod:`dift_fast.hashing`).
    """
    if not isinstance(manifest, dict):
        return [f"manifest is a {type(manifest).__name__}, not a JSON object"]
    problems = [f"missing key {k!r}" for k in _REQUIRED if k not in manifest]
    if problems:
        return problems
    if manifest["format"] != FORMAT:
        problems.append(f"format is {manifest['format']!r}, expected {FORMAT!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        problems.append(f"format_version is {manifest['format_version']!r}; this dift-fast reads {FORMAT_VERSION}")
    if manifest["dtype"] not in ("fp32", "fp16", "bf16"):
        problems.append(f"dtype {manifest['dtype']!r} is not fp32, fp16 or bf16")
    files = manifest["files"]
    if not isinstance(files, dict) or not files or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        return [*problems, "files must be a non-empty object {name: {size, sha256}}"]
    if not isinstance(manifest["graphs"], dict):
        return [*problems, "graphs must be an object {name: {file, inputs, outputs}}"]
    for name in files:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            problems.append(f"file name {name!r} is not a plain file name in the export folder")
    if problems:
        return problems
    for name, graph in manifest["graphs"].items():
        missing = [k for k in _GRAPH_KEYS if k not in graph]
        if missing:
            problems.append(f"graph {name!r} lacks {missing}")
        elif graph["file"] not in files:
            problems.append(f"graph {name!r} file {graph['file']!r} is not listed in files")
    expected_content = stable_hash({k: v["sha256"] for k, v in sorted(files.items())})
    if manifest["content_hash"] != expected_content:
        problems.append("content_hash does not match the listed file hashes")
    if folder is not None:
        for name, info in files.items():
            path = Path(folder) / name
            if not path.is_file():
                problems.append(f"{name} is missing from {folder}")
            elif path.stat().st_size != info["size"]:
                problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {info['size']}")
            elif verify_hashes and file_sha256(path) != info["sha256"]:
                problems.append(f"{name} content differs from the manifest's sha256 (modified or corrupt)")
    image_size = manifest.get("image_size")
    if not manifest["dynamic_size"] and not (isinstance(image_size, list) and len(image_size) == 2
                                             and all(isinstance(v, int) and v > 0 for v in image_size)):
        problems.append(f"a static export needs image_size [W, H], got {image_size!r}")
    return problems


def load_manifest(folder: str | Path, *, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and validate ``folder/manifest.json``, and check every file's sha256 (cached; see the module docstring).

    Raises:
        ManifestError: saying what is wrong (missing, malformed, a file missing, resized or modified).
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST_NAME}: not an export folder (or an unfinished export); "
                            "create one with `dift-fast export --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is not valid JSON: {err}. {_UNUSABLE}") from None
    problems = validate_manifest(manifest, Path(folder), verify_hashes=verify_hashes)
    if problems:
        raise ManifestError(f"{path} is invalid: " + "; ".join(problems) + f". {_UNUSABLE}")
    return manifest


# What a damaged or modified export means for its owner (nothing of theirs is touched).
_UNUSABLE = ("The export was not used and not changed: export again into a new folder (`dift-fast export --out "
             "DIR`), or delete this one to export there")
