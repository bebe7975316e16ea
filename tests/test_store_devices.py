"""Multi-GPU store workers use their own device: set before anything touches CUDA, events on that device's stream,
the loop under its device guard. Tested with a stand-in torch.cuda on the CPU; the real GPUs in -m gpu."""

from __future__ import annotations

import contextlib
import queue
import types
from typing import ClassVar

import pytest
import torch

from dift_fast.store import parallel, pipeline


def test_worker_sets_its_device_before_loading_the_extractor(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: events.append(("set_device", torch.device(d))))

    def load(job, device):
        events.append(("load", device))
        raise RuntimeError("stop here")

    monkeypatch.setattr(parallel, "load_job_extractor", load)
    q: queue.Queue = queue.Queue()
    parallel._worker(types.SimpleNamespace(), None, [], "cuda:1", 3, q, 1)
    assert events == [("set_device", torch.device("cuda", 1)), ("load", "cuda:1")]
    kind, index, *_, message = q.get_nowait()
    assert kind == "error" and index == 3 and "stop here" in message

    events.clear()
    threads = torch.get_num_threads()
    try:
        parallel._worker(types.SimpleNamespace(), None, [], "cpu", 0, q, 1)
    finally:
        torch.set_num_threads(threads)
    assert events == [("load", "cpu")]  # no CUDA call for a CPU worker


class FakeEvent:
    log: ClassVar[list] = []

    def record(self, stream=None):
        FakeEvent.log.append(("record", stream))

    def synchronize(self):
        FakeEvent.log.append(("synchronize", self))


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.current_stream / Event stand-ins that log which device's stream is used; no pinned memory."""
    FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", torch.device(device)))
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: real_empty(*a, **k))
    copies = []
    monkeypatch.setattr(pipeline, "_copy_to", lambda t, device: copies.append(device) or t.clone())
    return copies


def test_pinned_copies_are_recorded_on_the_workers_device_stream(fake_cuda):
    gpu1 = torch.device("cuda", 1)
    upload = pipeline._PinnedUpload(gpu1)
    pixels = [torch.rand(3, 8, 8) for _ in range(2)]
    out = upload(pixels)
    assert torch.equal(out, torch.stack(pixels))
    assert fake_cuda == [gpu1]  # the copy goes to the worker's device
    assert FakeEvent.log == [("record", ("stream of", gpu1))]  # not the current device's (GPU 0's) stream
    first = upload.copied
    upload([torch.rand(3, 8, 8)])  # the same buffer: wait for the last copy out of it first
    assert FakeEvent.log[1] == ("synchronize", first) and FakeEvent.log[2] == ("record", ("stream of", gpu1))


def test_the_loop_runs_under_the_extractors_device_guard(fake_cuda, monkeypatch):
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(torch.device(d))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    extractor = types.SimpleNamespace(device=torch.device("cuda", 1), config=types.SimpleNamespace(image_size=None))
    seen = []
    monkeypatch.setattr(pipeline.StorePipeline, "_loop", lambda self, names, pool, result: seen.append(list(entered)))
    pipeline.StorePipeline(extractor, object(), object(), decode_workers=0, check_identity=False).run([])
    assert seen == [[torch.device("cuda", 1)]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_pinned_upload_on_the_second_gpu():
    gpu1 = torch.device("cuda", 1)
    upload = pipeline._PinnedUpload(gpu1)
    pixels = [torch.rand(3, 64, 64) for _ in range(4)]
    for _ in range(3):  # buffer reuse behind the event
        out = upload(pixels)
        assert out.device == gpu1
    torch.cuda.synchronize(gpu1)
    assert torch.equal(out.cpu(), torch.stack(pixels))
