"""A store's identity: the settings that decide the stored numbers, and how two identities differ.

Two runs with equal identities write equal stores, so a run resumes into a store only when its identity equals the
one the store was made with (``store.json``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["StoreDtype", "describe_diff", "identity_of", "model_fingerprint"]

StoreDtype = Literal["fp16", "fp32"]


def identity_of(
    config: Any, model_folder: Path, compute_dtype: torch.dtype, store_dtype: StoreDtype, pca_dim: int | None,
    pca_sample: int,
) -> dict[str, Any]:
    """What decides the stored numbers: two runs with equal identities write equal stores.

    Batch size, device placement, backend and worker counts are left out: by the noise contract they do not
    change the features (up to the device's float rounding).
    """
    folder = Path(model_folder)
    local = Path(config.model).is_dir()
    return {
        "model": None if local else config.model,  # hub id or 'tiny-random'; local folders go by fingerprint
        "revision": config.revision,
        "snapshot": folder.name if folder.parent.name == "snapshots" else None,  # hub commit actually loaded
        "model_fingerprint": model_fingerprint(folder),
        "t": config.t,
        "up_ft_index": config.up_ft_index,
        "ensemble_size": config.ensemble_size,
        "image_size": list(config.image_size) if config.image_size is not None else None,
        "prompt": config.prompt,
        "seed": config.seed,
        "compute_dtype": str(compute_dtype).replace("torch.", ""),
        "store_dtype": store_dtype,
        "pca_dim": pca_dim,
        "pca_sample": pca_sample if pca_dim else None,
        # Recorded when they differ from what a store made before backbones existed means (SD, its own UNet), so
        # those stores keep their identity; a store of another backbone or UNet never matches an SD run.
        **({"backbone": config.backbone} if config.backbone != "sd" else {}),
        **({"unet_weights": config.unet_weights} if config.unet_weights is not None else {}),
    }


def model_fingerprint(folder: Path) -> str:
    """Hash of the component configs and weight file sizes: cheap, and changes when the weights do.

    ``folder`` may also be a single checkpoint file (ADM: its name and size), or a folder without SD components
    (an ADM folder: its own configs and checkpoints).
    """
    h = hashlib.blake2b(digest_size=8)
    if folder.is_file():
        h.update(f"{folder.name}:{folder.stat().st_size}".encode())
        return h.hexdigest()
    comps = [c for c in ("unet", "vae", "text_encoder") if (folder / c).is_dir()] or ["."]
    for comp in comps:
        d = folder / comp
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix == ".json":
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin", ".pt"):
                h.update(f"{comp}/{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: store has X, this run Y`` for every key whose value differs."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: store has {old.get(k)!r}, this run {new.get(k)!r}" for k in keys)
