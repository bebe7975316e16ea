"""One store run, start to end: list images, open or create the store, fit PCA, extract what is pending."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..images import ImageError
from .grid import StoreGrid
from .job import StoreJob, job_identity, load_job_extractor
from .parallel import extract_on_devices
from .pca import fit_pca, sample_names
from .pipeline import RunResult, StageTimes, StorePipeline
from .ray_data import connect, extract_with_ray
from .sources import ImageSource, find_images, load_prepared
from .store import FeatureStore

__all__ = ["StoreSummary", "extract_to_store"]

logger = logging.getLogger(__name__)


@dataclass
class StoreSummary:
    """What a run did."""

    store: FeatureStore | StoreGrid
    total: int  # images found under the inputs
    skipped: int  # already in the store before this run
    adopted: int  # complete files a killed run left without a manifest line
    written: int  # stored by this run
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason, this run
    times: StageTimes = field(default_factory=StageTimes)
    seconds: float = 0.0
    batch_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def extract_to_store(job: StoreJob, extractor: Any = None) -> StoreSummary:
    """Extract every image of ``job.inputs`` that the store at ``job.out`` lacks.

    Args:
        extractor: an already loaded extractor (single-process runs); built from ``job.config`` when None.

    Raises:
        StoreConfigError: the store exists with other settings and ``job.overwrite`` is False.
        StoreFullError: the disk filled up; the store is consistent and the same call continues it later.
    """
    source = find_images(job.inputs)
    devices = job.devices or [str(extractor.device) if extractor is not None else job.config.device]
    if job.ray_address is not None:
        devices = ["cuda" if connect(job.ray_address) else "cpu"]  # what the actors will run on
    _check_one_device_type(devices)
    parallel = len(devices) > 1 or job.ray_address is not None
    if job.cells is not None:
        _check_grid_job(job, parallel)
    if extractor is None and not parallel:
        extractor = load_job_extractor(job, devices[0])
    from ..backbones.registry import is_tiny_model

    extra = {"root": source.root, "tiny_random": is_tiny_model(job.config)}
    if job.cells is not None:  # a folder of one store per (t, block) cell, filled from one pass per t
        store = StoreGrid.create_or_open(  # returns with the grid's and every cell's writer lock held
            job.out, {cell: job_identity(job, extractor, devices[0], cell) for cell in job.cells},
            {(t, k): job.config.replace(t=t, up_ft_index=k).to_dict() for t, k in job.cells},
            overwrite=job.overwrite, must_exist=job.resume, extra=extra,
        )
    else:
        identity = job_identity(job, extractor, devices[0])
        store = FeatureStore.create_or_open(  # returns with the writer lock held
            job.out, identity, job.config.to_dict(), overwrite=job.overwrite, must_exist=job.resume, extra=extra,
        )
    store.fsync = job.fsync
    try:
        store.clear_tmp()
        adopted = store.recover(source.names)
        target = store
        if job.cells is not None:  # only the cells that lack images run (a grown grid computes its new cells only)
            target, lacking = store.pending(source.names)
            done = set(source.names) - set(lacking)
        else:  # an image is done when its manifest line and its file are there (a deleted file is recomputed)
            done = {n for n in store.done_names() if store.path(n).is_file()}
        skipped = sum(1 for n in source.names if n in done) - len(adopted)
        if job.pca_dim and store.pca is None:
            fit_extractor = extractor if extractor is not None else load_job_extractor(job, devices[0])
            _fit_store_pca(store, fit_extractor, source, job)
            del fit_extractor
        pending = [n for n in source.names if n not in done]
        if job.ray_address is not None:
            result = extract_with_ray(job, source, pending)
        elif len(devices) > 1:
            result = extract_on_devices(job, source, pending, devices)
        elif pending:
            result = StorePipeline(extractor, target, source, decode_workers=job.decode_workers,
                                   batch_size=job.batch_size, progress=job.progress).run(pending)
        else:
            result = RunResult()
    finally:
        store.unlock()
    return StoreSummary(store, len(source.names), skipped, len(adopted), result.written,
                        result.failed, result.times, result.seconds, result.batch_size)


def _check_grid_job(job: StoreJob, parallel: bool) -> None:
    """A grid run is one process without PCA (each cell would need its own fit); say so before anything starts."""
    if parallel:
        raise ValueError("a (t, block) grid (--timesteps/--blocks) runs in one process: several --devices and --ray "
                         "are not supported for grids yet; pass one --device, or extract each cell in its own run")
    if job.pca_dim:
        raise ValueError("--pca is not supported with a (t, block) grid (each cell would need its own PCA); extract "
                         "the cell you keep on its own with --pca")
    deepest = max(k for _, k in job.cells)
    if job.config.up_ft_index != deepest:
        raise ValueError(f"the grid's config must reach its deepest block {deepest}, not {job.config.up_ft_index}: "
                         "build it with dift_fast.grid.grid_config")


def _check_one_device_type(devices: list[str | None]) -> None:
    """Refuse devices of different types in one run: their features would not share one identity."""
    import torch

    types = {torch.device(d).type if d else ("cuda" if torch.cuda.is_available() else "cpu") for d in devices}
    if len(types) > 1:
        raise ValueError(
            f"--devices {','.join(str(d) for d in devices)} mixes device types ({', '.join(sorted(types))}); their "
            "features differ beyond rounding (dtype, TF32), so one store takes one type: run them into two stores"
        )


def _fit_store_pca(store: FeatureStore, extractor: Any, source: ImageSource, job: StoreJob) -> None:
    """Fit the store's PCA on an even sample of the images (the same sample whenever the run restarts)."""
    maps = []
    for name in sample_names(source.names, job.pca_sample):
        try:
            prepared = load_prepared(source, name, extractor.config.image_size)
        except ImageError:
            continue  # reported by the main pass
        with torch.inference_mode():
            maps.append(extractor.extract_prepared([prepared]).features[0].to("cpu", torch.float32))
    pca = fit_pca(maps, job.pca_dim)
    store.save_pca(pca)
    logger.info("PCA to %d channels on %d images: %.1f%% of the variance kept", job.pca_dim, len(maps),
                100 * float(pca.explained_variance_ratio.sum()))
