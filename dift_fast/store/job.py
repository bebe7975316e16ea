"""What a store run is asked to do (:class:`StoreJob`), and the extractor and identity it implies.

The orchestrators (``runner`` for one process, ``parallel`` for one process per device, ``ray_data`` for a Ray
cluster) all import this module and none of them imports another's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backend_options import BackendOptions
from ..config import DiftConfig
from .identity import StoreDtype, store_identity

__all__ = ["StoreJob", "job_identity", "load_job_extractor"]


@dataclass
class StoreJob:
    """Everything a store run needs (picklable: multi-device workers and Ray actors receive it).

    Three kinds of workers, each its own field: ``decode_workers`` threads decode images ahead of the network in
    every process; ``devices`` starts one worker process per device on this machine; ``ray_workers`` is the number
    of Ray actors (one extractor each) on a Ray cluster.
    """

    inputs: list[str]  # one ROOT folder, or image files / globs (local or fsspec URLs)
    out: str  # store folder
    config: DiftConfig
    store_dtype: StoreDtype = "fp16"
    pca_dim: int | None = None  # reduce channels to this many with a PCA; None keeps all
    pca_sample: int = 64  # images the PCA is fitted on
    overwrite: bool = False  # delete an existing store (also one made with other settings)
    resume: bool = False  # require an existing store
    decode_workers: int = 2  # decode threads per process; 0: decode in the loop (sequential)
    batch_size: int | None = None  # None: the config's on CPU, from free memory on CUDA
    devices: list[str] | None = None  # one worker process per device when several; None: config.device
    ray_address: str | None = None  # run on a Ray cluster ("local", "auto" or ray://host:port)
    ray_workers: int | None = None  # Ray actors (default: GPUs in the cluster, or 2 without GPUs)
    progress: bool = False
    fsync: bool = True  # flush each feature file to disk before it is renamed into place
    backend_options: BackendOptions | None = None  # OrtOptions/TrtOptions for config.backend (None: defaults)
    # (t, block) cells of a grid (a folder of one store per cell, store/grid.py); None: the config's one cell.
    # The config's network must reach the deepest block (dift_fast.grid.grid_config).
    cells: list[tuple[int, int]] | None = None


def load_job_extractor(job: StoreJob, device: str | None) -> Any:
    """The job's extractor on ``device`` (None: the config's device)."""
    from ..extractor import DiftExtractor

    config = job.config if device is None else job.config.replace(device=device)
    return DiftExtractor.from_pretrained(config=config, backend_options=job.backend_options)


def job_identity(job: StoreJob, extractor: Any = None, device: str | None = None,
                 cell: tuple[int, int] | None = None) -> dict[str, Any]:
    """The store identity ``job`` writes (of grid cell ``cell``): from a loaded ``extractor``, else predicted from
    the config.

    The prediction (used when the parent of a multi-device or Ray run loads no model) reads the model's weights
    to hash them but loads no network; every worker checks its own extractor's identity against the store's
    before it writes (:meth:`StorePipeline.run`), so a wrong prediction is refused, never mixed in.
    """
    from ..identity import config_identity, extractor_identity

    t, block = cell if cell is not None else (None, None)
    if extractor is not None:
        features = extractor_identity(extractor, t=t, block=block)
    else:
        features = config_identity(job.config, device, job.backend_options, t=t, block=block)
    return store_identity(features, job.store_dtype, job.pca_dim, job.pca_sample)
