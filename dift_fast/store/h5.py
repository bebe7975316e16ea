"""Export a feature store to an hloc-style HDF5 file (needs h5py: ``pip install h5py``).

Layout, as hloc's ``extract_features`` writes it: one group per image name (a name with ``/`` makes nested
groups, which hloc's ``list_h5_names`` reads back as the full name), holding

- ``dense_features``: the stored map [C, h, w] in the store's dtype (fp16 or fp32);
- ``image_size``: the original (width, height), hloc's convention;

and the file's attributes record the store identity as JSON (``dift_fast_identity``). Every image's file is
checked against its checksum as it is read; a damaged one is left out, named in the attribute
``dift_fast_skipped`` and in the result, and the others are exported.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .store import FeatureStore, StoreCorruptError

__all__ = ["H5Export", "export_h5"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class H5Export:
    """What :func:`export_h5` wrote; usable as the path itself (``h5py.File(result)``)."""

    path: Path
    images: int  # images exported
    skipped: dict[str, str] = field(default_factory=dict)  # damaged images left out: name -> reason

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def export_h5(
    store: FeatureStore | str | os.PathLike,
    out: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    dataset: str = "dense_features",
) -> H5Export:
    """Write the store's images (all, or ``names``) to ``out``, image by image.

    The file is written under a temporary name and renamed, so an interrupted export leaves no partial file.
    Images whose feature file is damaged (checksum mismatch) are skipped and reported in the result.
    """
    from ..extras import import_extra

    h5py = import_extra("h5py", "HDF5 export", extra="colmap")
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    entries = store.entries()
    names = sorted(entries) if names is None else list(names)
    missing = [n for n in names if n not in entries]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in store {store.root}: {missing[:5]}")
    skipped: dict[str, str] = {}
    with atomic_path(out) as tmp, h5py.File(tmp, "w", libver="latest") as fd:
        fd.attrs["dift_fast_identity"] = json.dumps(store.meta["identity"], sort_keys=True)
        fd.attrs["format"] = "dift-fast-hloc/1"
        for name in names:
            try:
                features = store.get(name).numpy()
            except (StoreCorruptError, KeyError) as err:
                skipped[name] = str(err.args[0]) if isinstance(err, KeyError) else str(err)
                logger.warning("export-h5: skipped %s", skipped[name])
                continue
            grp = fd.create_group(name)
            grp.create_dataset(dataset, data=features)
            grp.create_dataset("image_size", data=np.array(entries[name].original_size, dtype=np.int64))
        fd.attrs["dift_fast_skipped"] = json.dumps(skipped, sort_keys=True)
    return H5Export(out, len(names) - len(skipped), skipped)
