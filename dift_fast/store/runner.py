"""One store run, start to end: list images, open or create the store, fit PCA, extract what is pending."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import DiftConfig
from ..images import ImageError
from .pca import fit_pca, sample_names
from .pipeline import RunResult, StageTimes, StorePipeline
from .sources import ImageSource, find_images, load_prepared
from .store import FeatureStore, StoreDtype, identity_of

__all__ = ["StoreJob", "StoreSummary", "extract_to_store"]

logger = logging.getLogger(__name__)


@dataclass
class StoreJob:
    """Everything a store run needs (picklable: multi-GPU workers receive it)."""

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
    devices: list[str] | None = None  # one process per device when several; None: config.device
    ray_address: str | None = None  # run on a Ray cluster ("local", "auto" or ray://host:port)
    ray_workers: int | None = None  # Ray actors (default: GPUs in the cluster, or 2 without GPUs)
    progress: bool = False
    fsync: bool = True  # flush each feature file to disk before it is renamed into place


@dataclass
class StoreSummary:
    """What a run did."""

    store: FeatureStore
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


def _resolve_identity(job: StoreJob, extractor: Any, device: str | None) -> dict[str, Any]:
    if extractor is not None:
        return identity_of(extractor.config, extractor.components.folder, extractor.dtype, job.store_dtype,
                           job.pca_dim, job.pca_sample)
    from ..extractor import resolve_device, resolve_dtype
    from ..loading import resolve_model_folder

    folder = resolve_model_folder(job.config.model, job.config.revision)
    dtype = resolve_dtype(job.config.dtype, torch.device(device) if device else resolve_device(None))
    return identity_of(job.config, folder, dtype, job.store_dtype, job.pca_dim, job.pca_sample)


def load_job_extractor(job: StoreJob, device: str | None) -> Any:
    from ..extractor import DiftExtractor

    config = job.config if device is None else job.config.replace(device=device)
    return DiftExtractor.from_pretrained(config=config)


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
        from .ray_data import connect

        devices = ["cuda" if connect(job.ray_address) else "cpu"]  # what the actors will run on
    parallel = len(devices) > 1 or job.ray_address is not None
    if extractor is None and not parallel:
        extractor = load_job_extractor(job, devices[0])
    identity = _resolve_identity(job, extractor, devices[0])
    store = FeatureStore.create_or_open(
        job.out, identity, job.config.to_dict(), overwrite=job.overwrite, must_exist=job.resume,
        extra={"root": source.root, "tiny_random": job.config.model == "tiny-random"},
    )
    store.fsync = job.fsync
    store.lock()
    try:
        store.clear_tmp()
        adopted = store.recover(source.names)
        done = store.done_names()
        skipped = sum(1 for n in source.names if n in done) - len(adopted)
        if job.pca_dim and store.pca is None:
            fit_extractor = extractor if extractor is not None else load_job_extractor(job, devices[0])
            _fit_store_pca(store, fit_extractor, source, job)
            del fit_extractor
        pending = [n for n in source.names if n not in done]
        if job.ray_address is not None:
            from .ray_data import extract_with_ray

            result = extract_with_ray(job, source, pending)
        elif len(devices) > 1:
            from .parallel import extract_on_devices

            result = extract_on_devices(job, source, pending, devices)
        elif pending:
            result = StorePipeline(extractor, store, source, decode_workers=job.decode_workers,
                                   batch_size=job.batch_size, progress=job.progress).run(pending)
        else:
            result = RunResult()
    finally:
        store.unlock()
    return StoreSummary(store, len(source.names), skipped, len(adopted), result.written,
                        result.failed, result.times, result.seconds, result.batch_size)


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
