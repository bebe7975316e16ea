"""Several devices on one machine: one spawned worker process per device over the store's pending list.

Each worker loads its own extractor, runs the overlapped pipeline on its share and writes to the same store
(its own manifest and failure log, so appends never interleave). The parent holds the store lock, shows one
progress bar and reports a worker that died.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Sequence

from .job import StoreJob, load_job_extractor
from .pipeline import RunResult, StageTimes, StorePipeline
from .sources import ImageSource
from .store import FeatureStore, StoreFullError

__all__ = ["cpu_threads_per_worker", "extract_on_devices", "split_work"]


def split_work(names: Sequence[str], n_workers: int) -> list[list[str]]:
    """Round-robin shares: every name in exactly one share, sizes differ by at most one, order kept."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return [list(names[i::n_workers]) for i in range(n_workers)]


def cpu_threads_per_worker(n_cpu_workers: int) -> int:
    """Intra-op threads for each of ``n_cpu_workers`` CPU workers: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, n_cpu_workers))


def _worker(job: StoreJob, source: ImageSource, names: list[str], device: str, index: int, q, threads: int) -> None:
    """Entry point of a spawned worker: extract ``names`` on ``device`` and report through ``q``."""
    parent = os.getppid()
    try:
        import torch

        if device == "cpu":
            torch.set_num_threads(threads)  # workers sharing the cores must not oversubscribe them
        elif torch.device(device).type == "cuda":
            # Before anything touches CUDA: otherwise this process opens a context on GPU 0 and work that names no
            # device (events, empty_cache, engines) lands there.
            torch.cuda.set_device(torch.device(device))
        extractor = load_job_extractor(job, device)
        store = FeatureStore.open(job.out)
        store.fsync = job.fsync

        def on_progress(written: int, failed: int, times: StageTimes) -> None:
            q.put(("progress", index, written, failed, None))
            if os.getppid() != parent:  # the parent was killed: stop instead of running on unsupervised
                os._exit(1)

        res = StorePipeline(extractor, store, source, decode_workers=job.decode_workers, batch_size=job.batch_size,
                            on_progress=on_progress).run(names)
        q.put(("done", index, res.written, res.failed, (dataclasses.asdict(res.times), res.batch_size)))
    except StoreFullError as err:
        q.put(("full", index, 0, {}, str(err)))
    except BaseException:
        q.put(("error", index, 0, {}, traceback.format_exc()))


def extract_on_devices(job: StoreJob, source: ImageSource, pending: Sequence[str], devices: Sequence[str]) -> RunResult:
    """Extract ``pending`` with one spawned process per device; returns the combined result.

    Raises:
        StoreFullError: a worker found the disk full (the others finish their current batch and stop too).
        RuntimeError: a worker failed or died.
    """
    start = time.perf_counter()
    shares = split_work(pending, len(devices))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    threads = cpu_threads_per_worker(sum(d == "cpu" for d in devices))
    procs = [ctx.Process(target=_worker, args=(job, source, share, dev, i, q, threads), name=f"dift-store-{i}")
             for i, (dev, share) in enumerate(zip(devices, shares)) if share]
    bar = None
    if job.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc=f"dift-fast store ({len(procs)} devices)", unit="img")
    result = RunResult()
    finished: dict[int, tuple] = {}
    for p in procs:
        p.start()
    index_of = {p.name: i for i, p in enumerate(procs)}
    try:
        while len(finished) < len(procs):
            try:
                kind, idx, written, failed, extra = q.get(timeout=0.5)
            except queue.Empty:
                for p in procs:
                    i = index_of[p.name]
                    if i not in finished and not p.is_alive() and p.exitcode != 0:
                        finished[i] = ("died", f"worker on {devices[i]} died (exit code {p.exitcode})")
                continue
            if kind == "progress":
                if bar is not None:
                    bar.update(written + failed)
                continue
            finished[idx] = (kind, extra)
            result.written += written
            result.failed.update(failed)
            if kind == "done":
                times, bs = extra
                result.times.add(StageTimes(**times))
                result.batch_size = max(result.batch_size, bs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        if bar is not None:
            bar.close()
    problems = {i: v for i, v in finished.items() if v[0] != "done"}
    if any(v[0] == "full" for v in problems.values()):
        raise StoreFullError(next(v[1] for v in problems.values() if v[0] == "full"))
    if problems:
        raise RuntimeError("; ".join(f"{devices[i]}: {v[1]}" for i, v in sorted(problems.items())))
    result.seconds = time.perf_counter() - start
    return result
