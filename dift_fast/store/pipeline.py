"""The overlapped extraction loop of one process: decode threads -> pinned copy -> network -> writer thread.

Decoding and resizing run ahead in a thread pool (PIL releases the GIL), the batch is copied to the GPU from
pinned memory without blocking, and a writer thread stores the previous batch while the network runs on the next.
Each stage's time is shown in the progress bar; on CUDA the batch size starts from free GPU memory and halves on
out-of-memory instead of crashing.

Everything CUDA happens on the extractor's device: the loop runs under ``torch.cuda.device(device)`` and the
pinned-copy event is recorded on that device's current stream (the stream the copy is queued on), so a worker on
GPU 1 neither opens a context on GPU 0 nor lets a copy race the next batch's staging.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..batch_size import MAX_AUTO_BATCH, batch_size_for_memory, cuda_free_bytes
from ..images import ImageError, PreparedImage
from .grid import StoreGrid
from .sources import ImageSource, load_prepared
from .store import FeatureStore

__all__ = ["RunResult", "StageTimes", "StorePipeline", "auto_batch_size"]

logger = logging.getLogger(__name__)



@dataclass
class StageTimes:
    """Seconds spent per stage, summed over a run (``decode`` is the time the loop waited for decoded images)."""

    decode: float = 0.0
    transfer: float = 0.0
    compute: float = 0.0
    write: float = 0.0
    images: int = 0

    def add(self, other: StageTimes) -> None:
        for k in ("decode", "transfer", "compute", "write", "images"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def per_image_ms(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {k: 1000.0 * getattr(self, k) / n for k in ("decode", "transfer", "compute", "write")}

    def postfix(self) -> str:
        ms = self.per_image_ms()
        return f"ms/img decode {ms['decode']:.0f} xfer {ms['transfer']:.1f} compute {ms['compute']:.0f} write {ms['write']:.0f}"


@dataclass
class RunResult:
    written: int = 0  # images stored
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    times: StageTimes = field(default_factory=StageTimes)
    batch_size: int = 0
    seconds: float = 0.0


def auto_batch_size(extractor: Any, sample: PreparedImage, cap: int = MAX_AUTO_BATCH) -> int:
    """Images per batch that fit in free GPU memory, measured on one image (the config's batch size on CPU)."""
    if extractor.device.type != "cuda":
        return extractor.config.batch_size
    dev = extractor.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    extractor.extract_prepared([sample])
    per_image = max(torch.cuda.max_memory_allocated(dev) - base, 1)
    return batch_size_for_memory(cuda_free_bytes(dev), per_image, cap=cap)  # the extractor's rule, measured


def _copy_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Queue the copy of pinned ``t`` on ``device``'s current stream (returns at once)."""
    return t.to(device, non_blocking=True)


class _PinnedUpload:
    """Stages batches of pixels in one pinned buffer and copies them to a CUDA ``device`` without blocking.

    The buffer is reused for the next batch only after the event recorded behind the last copy has passed; the
    event is recorded on ``device``'s current stream, the one the copy is queued on.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffer: torch.Tensor | None = None
        self.copied: Any = None  # CUDA event: the last copy out of the buffer finished

    def __call__(self, pixels: list[torch.Tensor]) -> torch.Tensor:  # [n, 3, H, W] on device
        n, shape = len(pixels), (len(pixels), *pixels[0].shape)
        if self.buffer is None or self.buffer.shape[0] < n or self.buffer.shape[1:] != shape[1:]:
            if self.copied is not None:
                self.copied.synchronize()  # the old buffer may still be read by its last copy
            self.buffer = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        elif self.copied is not None:
            self.copied.synchronize()  # don't overwrite the buffer while the last copy may still read it
        torch.stack(pixels, out=self.buffer[:n])
        on_dev = _copy_to(self.buffer[:n], self.device)
        self.copied = torch.cuda.Event()
        self.copied.record(torch.cuda.current_stream(self.device))
        return on_dev


class _Writer:
    """One thread that does every store write, so the network never waits on the disk."""

    def __init__(self, store: FeatureStore, result: RunResult, on_done: Callable[[int, int], None]) -> None:
        self.store, self.result, self.on_done = store, result, on_done
        self.jobs: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="dift-store-writer", daemon=True)
        self.thread.start()

    def submit(self, job: tuple) -> None:
        while True:
            self.raise_error()
            try:
                self.jobs.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait until everything submitted is written; raise the writer's error if it stopped on one."""
        if self.error is None:
            self.submit(None)
        self.thread.join()
        self.raise_error()

    def stop(self) -> None:
        """After an error in the main loop: let the thread finish its current job and end."""
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("extraction stopped")
            try:
                self.jobs.put_nowait(None)
            except queue.Full:  # it is busy and will see the error after this job
                pass
            self.thread.join()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None or self.error is not None:
                return
            try:
                self._do(job)
            except BaseException as err:  # handed to the main thread, which stops the run
                self.error = err
                return

    def _do(self, job: tuple) -> None:
        if job[0] == "fail":
            _, name, reason = job
            self.store.record_failure(name, reason)
            self.result.failed[name] = reason
            self.on_done(0, 1)
            return
        _, items = job
        t0 = time.perf_counter()
        written = 0
        for name, feats, size, key in items:
            try:
                self.store.put(name, feats, size, key)
            except ValueError as err:  # e.g. fp16 overflow: this image fails, the run goes on
                self.store.record_failure(name, str(err))
                self.result.failed[name] = str(err)
                self.on_done(0, 1)
                continue
            self.result.written += 1
            written += 1
        self.result.times.write += time.perf_counter() - t0
        self.on_done(written, 0)


class StorePipeline:
    """Extract images of ``source`` into ``store`` with one extractor (one device).

    ``store`` is a :class:`FeatureStore`, or a :class:`~dift_fast.store.grid.StoreGrid` whose cells all come from
    one network pass per (image, t) of the extractor (loaded for the grid's deepest block).

    Args:
        decode_workers: threads decoding ahead; 0 decodes in the loop itself (the sequential baseline).
        batch_size: images per network call; None: the config's on CPU, from free memory on CUDA.
        on_progress: called as ``(written, failed, times)`` after every write (used by multi-GPU workers).
        check_identity: refuse to run when the extractor's feature identity differs from the store's (every
            writer checks, so a worker that would compute other features never writes); False only for stand-in
            extractors in tests.
    """

    def __init__(
        self,
        extractor: Any,
        store: FeatureStore,
        source: ImageSource,
        *,
        decode_workers: int = 2,
        batch_size: int | None = None,
        progress: bool = False,
        desc: str = "dift-fast store",
        on_progress: Callable[[int, int, StageTimes], None] | None = None,
        check_identity: bool = True,
    ) -> None:
        self.extractor, self.store, self.source = extractor, store, source
        self.check_identity = check_identity
        self.decode_workers = max(0, int(decode_workers))
        self.batch_size = batch_size
        self.progress, self.desc, self.on_progress = progress, desc, on_progress
        device = extractor.device
        self._upload = _PinnedUpload(device) if device.type == "cuda" else None

    # -- stages ----------------------------------------------------------------------------------------------

    def _decode(self, name: str) -> tuple[str, PreparedImage | ImageError]:
        try:
            return name, load_prepared(self.source, name, self.extractor.config.image_size)
        except ImageError as err:
            return name, err

    def _transfer(self, batch: list[PreparedImage]) -> list[PreparedImage]:
        if self._upload is None:
            return batch
        on_dev = self._upload([p.pixels for p in batch])
        return [PreparedImage(p.name, on_dev[i], p.key, p.original_size) for i, p in enumerate(batch)]

    def _device_guard(self) -> Any:
        """``torch.cuda.device`` of the extractor's CUDA device (nothing on the CPU)."""
        dev = self.extractor.device
        return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()

    def _extract(self, batch: list[PreparedImage]) -> list[tuple[str, torch.Tensor, tuple[int, int], int]]:
        """Features of ``batch``, halving the batch size on CUDA out-of-memory; returns CPU float32 maps."""
        from ..extractor import NonFiniteFeaturesError

        out = []
        i = 0
        while i < len(batch):
            chunk = batch[i : i + self.batch_size]
            if self.extractor.config.batch_size != len(chunk):
                self.extractor.config = self.extractor.config.replace(batch_size=len(chunk))
            try:
                stored = self._features(chunk)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise RuntimeError(
                        "out of GPU memory with one image per batch; use a smaller --image-size or --ensemble-size, "
                        "or --dtype bf16"
                    ) from None
                self.batch_size = max(1, self.batch_size // 2)
                logger.warning("out of GPU memory: batch size halved to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            except NonFiniteFeaturesError as err:
                if len(chunk) > 1:  # find the culprit: image by image
                    for p in chunk:
                        out.extend(self._extract_one_or_fail(p))
                    i += len(chunk)
                    continue
                self._fail(chunk[0].name, str(err))
                i += 1
                continue
            out.extend(stored)
            i += len(chunk)
        return out

    def _features(self, chunk: list[PreparedImage]) -> list[tuple[str, Any, tuple[int, int], int]]:
        """(name, CPU float32 map, original size, noise key) per image; for a :class:`StoreGrid` the map is
        ``{(t, block): [C, h, w]}`` of the cells these images lack, all from one pass per t (``extract_grid_prepared``)."""
        cells = self.store.cells_for([p.name for p in chunk]) if isinstance(self.store, StoreGrid) else None
        if cells is None:
            fb = self.extractor.extract_prepared(chunk)
            feats = fb.features.detach().to("cpu", torch.float32).unbind(0)
            return list(zip(fb.names, feats, fb.original_sizes, fb.image_keys))
        gb = self.extractor.extract_grid_prepared(chunk, cells=cells)
        per_cell = {cell: f.detach().to("cpu", torch.float32).unbind(0) for cell, f in gb.features.items()}
        maps = [{cell: per_cell[cell][i] for cell in cells} for i in range(len(gb.names))]
        return list(zip(gb.names, maps, gb.original_sizes, gb.image_keys))

    def _extract_one_or_fail(self, p: PreparedImage) -> list:
        from ..extractor import NonFiniteFeaturesError

        try:
            return self._features([p])
        except NonFiniteFeaturesError as err:
            self._fail(p.name, str(err))
            return []

    def _fail(self, name: str, reason: str) -> None:
        self._writer.submit(("fail", name, reason))

    def _check_identity(self) -> None:
        from ..identity import describe_diff, extractor_identity
        from .identity import feature_part
        from .store import StoreConfigError

        stores = self.store.stores if isinstance(self.store, StoreGrid) else None  # every cell against its own store
        for cell, store in (stores.items() if stores is not None else [(None, self.store)]):
            mine = extractor_identity(self.extractor) if cell is None else \
                extractor_identity(self.extractor, t=cell[0], block=cell[1])
            theirs = feature_part(store.meta["identity"])
            if mine != theirs:
                raise StoreConfigError(
                    f"this extractor computes other features than store {store.root} holds "
                    f"({describe_diff(theirs, mine)}); nothing was written"
                )

    # -- loop ------------------------------------------------------------------------------------------------

    def run(self, names: Sequence[str]) -> RunResult:
        """Extract and store ``names``; failures are logged in the store and returned, the run goes on.

        Raises:
            StoreFullError: the disk filled up (what was written is complete and kept).
        """
        if self.check_identity:
            self._check_identity()
        result = RunResult()
        start = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(names), desc=self.desc, unit="img", dynamic_ncols=True)
        lock = threading.Lock()

        def on_done(written: int, failed: int) -> None:
            with lock:
                if bar is not None:
                    bar.update(written + failed)
                    bar.set_postfix_str(result.times.postfix() + (f" failed {len(result.failed)}" if result.failed else ""),
                                        refresh=False)
                if self.on_progress is not None:
                    self.on_progress(written, failed, result.times)

        self._writer = _Writer(self.store, result, on_done)
        pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="dift-decode") if self.decode_workers else None
        try:
            with self._device_guard():
                self._loop(names, pool, result)
            self._writer.close()
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            self._writer.stop()
            if bar is not None:
                bar.close()
        result.batch_size = self.batch_size or 0
        result.seconds = time.perf_counter() - start
        return result

    def _loop(self, names: Sequence[str], pool: ThreadPoolExecutor | None, result: RunResult) -> None:
        times = result.times
        todo = iter(names)
        inflight: deque[Future] = deque()
        lookahead = max(2 * (self.batch_size or MAX_AUTO_BATCH // 4), 2 * self.decode_workers)

        def fill() -> None:
            if pool is None:
                return
            while len(inflight) < lookahead:
                name = next(todo, None)
                if name is None:
                    return
                inflight.append(pool.submit(self._decode, name))

        def next_decoded() -> tuple[str, PreparedImage | ImageError] | None:
            t0 = time.perf_counter()
            if pool is None:
                name = next(todo, None)
                item = None if name is None else self._decode(name)
            else:
                fill()
                item = inflight.popleft().result() if inflight else None
            times.decode += time.perf_counter() - t0
            return item

        batch: list[PreparedImage] = []
        while True:
            item = next_decoded()
            if item is not None:
                name, res = item
                if isinstance(res, ImageError):
                    self._fail(name, res.reason)
                else:
                    batch.append(res)
                    if self.batch_size is None:
                        self.batch_size = auto_batch_size(self.extractor, res)
                        lookahead = max(lookahead, 2 * self.batch_size)
                        logger.info("batch size %d", self.batch_size)
            if batch and (item is None or len(batch) >= self.batch_size):
                self._writer.raise_error()
                t0 = time.perf_counter()
                on_dev = self._transfer(batch)
                t1 = time.perf_counter()
                stored = self._extract(on_dev)
                t2 = time.perf_counter()
                times.transfer += t1 - t0
                times.compute += t2 - t1
                times.images += len(batch)
                self._writer.submit(("put", stored))
                batch = []
            if item is None:
                return
