"""Beyond one machine: the store run on a Ray cluster with Ray Data (optional extra ``dift-fast[ray]``).

The pending names become a dataset; ``map_batches`` runs :class:`StoreActor` (a callable class: one extractor per
actor, ``num_gpus=1`` each when the cluster has GPUs) over explicit batches. Every actor writes the store format
itself (feature files plus its own manifest and failure log), so the store must be on a filesystem all nodes
share; only names and statuses come back to the driver. Inputs may be local paths or any fsspec URL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .identity import describe_diff
from .job import StoreJob, job_identity, load_job_extractor
from .parallel import cpu_threads_per_worker
from .pipeline import RunResult, StorePipeline
from .sources import ImageSource
from .store import FeatureStore, StoreConfigError

__all__ = ["StoreActor", "connect", "extract_with_ray", "pool_kwargs"]

DEFAULT_RAY_BATCH = 8


def _ray() -> Any:
    from ..extras import import_extra

    import_extra("ray.data", "--ray")
    import ray

    return ray


def connect(address: str, num_cpus: int | None = None) -> int:
    """Connect to (or, for ``"local"``, start) a Ray cluster; returns the number of GPUs it has."""
    ray = _ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return int(ray.cluster_resources().get("GPU", 0))


def pool_kwargs(ray_data: Any, size: int) -> dict[str, Any]:
    """A fixed pool of ``size`` actors, as the installed Ray wants it.

    Ray 2.9-2.4x took ``compute=ActorPoolStrategy(size=n)`` and added ``concurrency=n``; recent releases
    deprecate ``concurrency`` again in favour of ``compute``. Use ``compute`` whenever ActorPoolStrategy exists.
    """
    strategy = getattr(ray_data, "ActorPoolStrategy", None)
    if strategy is not None:
        return {"compute": strategy(size=size)}
    return {"concurrency": size}


class StoreActor:
    """Ray Data callable class: extracts a batch of names into the store, returns their status."""

    def __init__(self, job: StoreJob, source: ImageSource, cpu_threads: int) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to our GPU
        if device == "cpu":
            torch.set_num_threads(cpu_threads)  # actors sharing a node's cores must not oversubscribe them
        self.extractor = load_job_extractor(job, device)
        self.store = FeatureStore.open(job.out)
        self.store.fsync = job.fsync
        mine = job_identity(job, self.extractor)
        if mine != self.store.meta["identity"]:
            raise StoreConfigError(f"Ray worker on {device} would write other features than the store holds "
                                   f"({describe_diff(self.store.meta['identity'], mine)}); pass --dtype explicitly")
        self.pipeline_args = {"decode_workers": job.decode_workers, "batch_size": job.batch_size}
        self.source = source

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [str(n) for n in batch["name"]]
        res = StorePipeline(self.extractor, self.store, self.source, **self.pipeline_args).run(names)
        reasons = [res.failed.get(n, "") for n in names]
        return {"name": np.array(names, dtype=object), "reason": np.array(reasons, dtype=object),
                "worker": np.array([self.store.writer_id] * len(names), dtype=object)}


def extract_with_ray(job: StoreJob, source: ImageSource, pending: Sequence[str]) -> RunResult:
    """Extract ``pending`` on the Ray cluster at ``job.ray_address`` into the store ``job.out``."""
    ray = _ray()
    start = time.perf_counter()
    result = RunResult()
    if not pending:
        return result
    n_gpus = connect(job.ray_address)
    workers = job.ray_workers or max(n_gpus, 0) or 2
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    batch = job.batch_size or DEFAULT_RAY_BATCH
    ds = ray.data.from_items([{"name": n} for n in pending], override_num_blocks=max(1, -(-len(pending) // batch)))
    ds = ds.map_batches(
        StoreActor,
        fn_constructor_args=(job, source, cpu_threads_per_worker(workers)),
        batch_size=batch,
        num_gpus=1 if n_gpus else 0,
        num_cpus=1 if n_gpus else max(0.5, (os.cpu_count() or 2) / (2 * workers)),
        **pool_kwargs(ray.data, workers),
    )
    bar = None
    if job.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc=f"dift-fast store (ray, {workers} workers)", unit="img")
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for name, reason in zip(out["name"], out["reason"]):
                if reason:
                    result.failed[str(name)] = str(reason)
                else:
                    result.written += 1
            if bar is not None:
                bar.update(len(out["name"]))
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    return result
