"""Which export a backend runs: the given folder after checking it fits the model, or a new (cached) export.

Every export is loaded through :func:`load_manifest`, which checks each graph file against the manifest's sha256: a
folder the user gave that was modified after export is refused (naming the file); an export in the cache whose
files were modified is exported again over them.

Checking that an export was made from the model's weights means hashing the UNet and VAE weights as loaded
(~3.5 GB for SD 2.1), so a successful check is remembered: a small marker under ``cache_root()/export-checks``
keyed by the export's weights hash, its block, and the content hash of the model's ``unet/`` and ``vae/`` weight
files (:func:`dift_fast.hashing.folder_sha256`, the one content-hash mechanism: read once, then cached by path,
size, mtime, ctime and inode). While those files are unchanged, the next backend built on the same model and
export loads neither the UNet nor the VAE. Components whose networks are already in memory are always hashed:
their weights may have been changed after loading.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from dift_fast.atomic import write_atomic
from dift_fast.backend_options import BackendOptions, backend_options_for
from dift_fast.cache import cache_root
from dift_fast.hashing import folder_sha256
from dift_fast.loading import load_networks

from .graphs import export_onnx
from .keys import weights_hash
from .manifest import MANIFEST_NAME, ManifestError, load_manifest, stable_hash
from .precision import dtype_name

__all__ = ["backend_export", "model_weights_sha256", "resolve_export", "verify_export_weights"]

logger = logging.getLogger(__name__)

CHECKS_SUBDIR = "export-checks"
EXPORTED_COMPONENTS = ("unet", "vae")  # the networks an export holds (the text encoder stays in torch)


def model_weights_sha256(folder: Path) -> str:
    """Content hash of the weight files of the model's ``unet/`` and ``vae/`` folders (cached by file stat)."""
    parts = {}
    for comp in EXPORTED_COMPONENTS:
        sub = Path(folder) / comp
        parts[comp] = folder_sha256(sub) if sub.is_dir() else None
    return stable_hash(parts)


def _check_marker(components: Any, manifest: dict[str, Any]) -> Path:
    key = stable_hash({"weights_sha256": manifest["model"]["weights_sha256"], "up_ft_index": manifest["up_ft_index"],
                       "model_files_sha256": model_weights_sha256(components.folder)})
    return cache_root() / CHECKS_SUBDIR / f"{key[:32]}.json"


def verify_export_weights(components: Any, manifest: dict[str, Any], folder: Path) -> None:
    """Raise ValueError when the export in ``folder`` was not made from ``components``' UNet and VAE weights.

    Components without networks in memory are checked against their files: through a remembered check when the
    files are unchanged since, else by loading and hashing the weights once (they are dropped afterwards).
    """
    in_memory = components.has_networks
    marker = None if in_memory else _check_marker(components, manifest)
    if marker is not None and marker.is_file():
        return
    if in_memory:
        unet, vae = components.unet, components.vae
    else:
        logger.info("checking export %s against the weights of %s (once)", folder, components.folder)
        unet, vae = load_networks(components.folder, components.up_ft_index)
    if manifest["model"]["weights_sha256"] != weights_hash(unet, vae):
        raise ValueError(f"export {folder} was made from other weights ({manifest['model']['id']}) than the "
                         f"loaded model ({components.model_id}); export this model or pass its --model")
    if marker is not None:
        _remember_check(marker, components, folder)


def _remember_check(marker: Path, components: Any, folder: Path) -> None:
    try:
        write_atomic(marker, json.dumps({"export": str(folder), "model": str(components.folder)}) + "\n")
    except OSError as err:  # a read-only cache only costs the next run another check
        logger.debug("could not remember the export check in %s: %s", marker, err)


def resolve_export(components: Any, dtype: torch.dtype, export_dir: str | os.PathLike | None, *,
                   no_build: bool = False, check_weights: bool = True) -> tuple[Path, dict[str, Any]]:
    """The export folder to run: ``export_dir`` when it holds an export, else a new (cached) dynamic-size export.

    An existing export must be of the same model (weights hash) and block; its dtype wins over ``dtype``.
    """
    if export_dir is not None and (Path(export_dir) / MANIFEST_NAME).is_file():
        folder = Path(export_dir)
        try:
            manifest = load_manifest(folder)  # every file against its sha256
        except ManifestError as err:
            raise ManifestError(f"export {folder} cannot be used: {err}. It was not changed: export again into a "
                                "new folder (`dift-fast export --out DIR`), or delete it to export there") from None
        if manifest["up_ft_index"] != components.up_ft_index:
            raise ValueError(f"export {folder} is of up block {manifest['up_ft_index']}, the extractor wants "
                             f"up_ft_index={components.up_ft_index}; export again with --up-ft-index")
        if check_weights:
            verify_export_weights(components, manifest, folder)
        want = dtype_name(dtype) or str(dtype)
        if manifest["dtype"] != want:
            logger.warning("export %s holds %s graphs; running them in %s (the requested %s does not apply)",
                           folder, manifest["dtype"], manifest["dtype"], want)
        return folder, manifest
    if no_build:
        where = export_dir if export_dir is not None else "the export cache"
        raise ManifestError(f"no export in {where} and no_build is set; run `dift-fast export --out DIR` first")
    name = dtype_name(dtype)
    if name is None:
        raise ValueError(f"dtype {dtype} cannot be exported; use fp32, fp16 or bf16")
    logger.info("exporting ONNX graphs (dynamic size, %s) for the onnxruntime or tensorrt backend", name)
    loaded_here = not components.has_networks
    folder, manifest = export_onnx(components, export_dir, dtype=name, dynamic_size=True)
    if loaded_here:  # read from the files just now: the new export is checked, and the backend runs its graphs
        _remember_check(_check_marker(components, manifest), components, folder)
        components.unet = components.vae = None
    return folder, manifest


def backend_export(backend: str, components: Any, dtype: torch.dtype, options: BackendOptions | dict[str, Any] | None,
                   **kwargs: Any) -> tuple[Any, Path, dict[str, Any]]:
    """An accelerated backend's validated options (from a dataclass, a dict or keywords) and the export it runs."""
    opts = backend_options_for(backend, options, **kwargs)
    folder, manifest = resolve_export(components, dtype, opts.export_dir, no_build=opts.no_build,
                                      check_weights=opts.check_weights)
    return opts, folder, manifest
