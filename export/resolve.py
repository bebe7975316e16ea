"""Which export a backend runs: the given folder after checking it fits the model, or a new (cached) export.

Every export is loaded through :func:`load_manifest`, which checks each graph file against the manifest's sha256: a
folder the user gave that was modified after export is refused (naming the file); an export in the cache whose
files were modified is exported again over them.

Checking that an export was made from the model's weights means hashing the network and encoder weights as loaded
(~3.5 GB for SD 2.1), so a successful check is remembered: a small marker under ``cache_root()/export-checks``
keyed by the export's weights hash, its backbone and block, and the content hash of the model's weight files
(``Backbone.content_hash``: an SD folder's components, an ADM checkpoint, a CleanDIFT UNet file, hashed through
:mod:`dift_fast.hashing`, the one content-hash mechanism: read once, then cached by path, size, mtime, ctime and
inode). While those files are unchanged, the next backend built on the same model and export loads neither the
network nor the encoder. Components whose networks are already in memory are always hashed: their weights may have
been changed after loading. Exports made into the cache (no ``export_dir``) are found the same way: an index under
``cache_root()/export-index``, keyed by that content hash, the backbone, block, dtype and attention form, names the
cache folder, so a later run does not load the networks to compute the export key.
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

from .attention import ATTENTION_FORM
from .graphs import export_onnx
from .keys import weights_hash
from .manifest import MANIFEST_NAME, ManifestError, load_manifest, stable_hash
from .precision import dtype_name

__all__ = ["backend_export", "model_weights_sha256", "resolve_export", "verify_export_weights"]

logger = logging.getLogger(__name__)

CHECKS_SUBDIR = "export-checks"
INDEX_SUBDIR = "export-index"  # model files' content hash + what was exported -> the cache folder holding it


def model_weights_sha256(components: Any) -> str:
    """Content hash of the model's weight files (``Backbone.content_hash``; cached by file stat, read once)."""
    return components.backbone.content_hash()


def _check_marker(components: Any, manifest: dict[str, Any]) -> Path:
    key = stable_hash({"weights_sha256": manifest["model"]["weights_sha256"], "up_ft_index": manifest["up_ft_index"],
                       "backbone": components.backbone.name, "model_files_sha256": model_weights_sha256(components)})
    return cache_root() / CHECKS_SUBDIR / f"{key[:32]}.json"


def _index_marker(components: Any, dtype: str) -> Path:
    """Where the cache remembers which folder holds this model's dynamic-size ``dtype`` export of its block.

    Keyed by the content hash of the model's weight files (cached by file stat, :mod:`dift_fast.hashing`), so a
    later run finds the export without loading the networks to hash them; changed files give another key.
    """
    key = stable_hash({"model_files_sha256": model_weights_sha256(components), "backbone": components.backbone.name,
                       "up_ft_index": components.up_ft_index, "dtype": dtype, "dynamic_size": True,
                       "attention": ATTENTION_FORM})
    return cache_root() / INDEX_SUBDIR / f"{key[:32]}.json"


def _indexed_export(marker: Path) -> Path | None:
    """The export folder ``marker`` names, when it still holds a manifest."""
    try:
        folder = Path(json.loads(marker.read_text())["export"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder if (folder / MANIFEST_NAME).is_file() else None


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
        unet, vae = components.load_networks()
    if manifest["model"]["weights_sha256"] != weights_hash(*(m for m in (unet, vae) if m is not None)):
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

    An existing export must be of the same model (weights hash) and block; its dtype wins over ``dtype``. Without
    ``export_dir``, an export this model's unchanged files were exported to before is found through the cache's
    index, without loading the networks; a damaged one is exported again.
    """
    name = dtype_name(dtype)
    index = None
    if export_dir is None and not components.has_networks and name is not None:
        index = _index_marker(components, name)
        cached = _indexed_export(index)
        if cached is not None:
            try:
                return resolve_export(components, dtype, cached, no_build=True, check_weights=check_weights)
            except (ManifestError, ValueError) as err:
                logger.info("cached export %s not used (%s); exporting again", cached, err)
    if export_dir is not None and (Path(export_dir) / MANIFEST_NAME).is_file():
        folder = Path(export_dir)
        manifest = load_manifest(folder)  # every file against its sha256
        if manifest.get("backbone", "sd") != components.backbone.name:
            raise ValueError(f"export {folder} is of backbone {manifest.get('backbone', 'sd')!r}, the extractor runs "
                             f"{components.backbone.name!r}; export this model (dift-fast export --preset ...)")
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
    if name is None:
        raise ValueError(f"dtype {dtype} cannot be exported; use fp32, fp16 or bf16")
    logger.info("exporting ONNX graphs (dynamic size, %s) for the onnxruntime or tensorrt backend", name)
    loaded_here = not components.has_networks
    folder, manifest = export_onnx(components, export_dir, dtype=name, dynamic_size=True)
    if loaded_here:  # read from the files just now: the new export is checked, and the backend runs its graphs
        _remember_check(_check_marker(components, manifest), components, folder)
        if index is not None:  # the next run finds this export without loading the networks
            _remember_check(index, components, folder)
        components.unet = components.vae = None
    return folder, manifest


def backend_export(backend: str, components: Any, dtype: torch.dtype, options: BackendOptions | dict[str, Any] | None,
                   **kwargs: Any) -> tuple[Any, Path, dict[str, Any]]:
    """An accelerated backend's validated options (from a dataclass, a dict or keywords) and the export it runs."""
    opts = backend_options_for(backend, options, **kwargs)
    folder, manifest = resolve_export(components, dtype, opts.export_dir, no_build=opts.no_build,
                                      check_weights=opts.check_weights)
    return opts, folder, manifest
