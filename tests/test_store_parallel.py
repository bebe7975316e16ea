"""Several workers over one store: work splitting, one process per device, Ray Data; same store as one process."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from store_helpers import assert_stores_equal, make_images

from dift_fast.store import StoreJob, extract_to_store
from dift_fast.store.parallel import cpu_threads_per_worker, split_work
from dift_fast.store.ray_data import pool_kwargs

N_IMAGES = 6


@pytest.mark.parametrize("n,workers", [(0, 2), (1, 3), (7, 2), (8, 4), (10, 3)])
def test_split_work_covers_every_name_once_and_balances(n, workers):
    names = [f"img{i:03d}" for i in range(n)]
    shares = split_work(names, workers)
    assert len(shares) == workers
    assert sorted(x for s in shares for x in s) == names  # each name exactly once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all(s == sorted(s) for s in shares)  # order kept inside a share
    assert all(shares[i] for i in range(min(n, workers)))  # empty shares only when names run out
    with pytest.raises(ValueError):
        split_work(names, 0)


def test_cpu_threads_per_worker_never_zero():
    assert cpu_threads_per_worker(1) >= 1 and cpu_threads_per_worker(10_000) == 1


def test_pool_kwargs_follow_the_installed_ray():
    class Strategy:
        def __init__(self, size):
            self.size = size

    new = pool_kwargs(types.SimpleNamespace(ActorPoolStrategy=Strategy), 3)
    assert isinstance(new["compute"], Strategy) and new["compute"].size == 3
    assert pool_kwargs(types.SimpleNamespace(), 3) == {"concurrency": 3}


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of two workers on this 2-core machine gets (bit-identical CPU results)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_process_store(one_thread, tiny_extractor_factory, tmp_path_factory):
    root = make_images(tmp_path_factory.mktemp("imgs"), N_IMAGES)
    out = tmp_path_factory.mktemp("single") / "store"
    extractor = tiny_extractor_factory()
    extract_to_store(StoreJob([str(root)], str(out), extractor.config), extractor)
    return root, out, extractor.config


# Slow (about 40 s here): two spawned interpreters each import torch and diffusers.
@pytest.mark.slow
@pytest.mark.skipif(cpu_threads_per_worker(2) != 1, reason="bit-equality needs 1 thread per worker (2-core machine)")
def test_one_process_per_device_equals_single_process(single_process_store, tmp_path):
    """The multi-GPU code path, on two CPU 'devices' (spawned processes, shared store, one manifest each)."""
    root, ref, config = single_process_store
    out = tmp_path / "store"
    summary = extract_to_store(StoreJob([str(root)], str(out), config, devices=["cpu", "cpu"]))
    assert summary.written == N_IMAGES and len(summary.failed) == 2
    assert len([p for p in (out / "manifests").iterdir() if p.stat().st_size]) == 2  # both workers wrote
    assert_stores_equal(out, ref)


# Slow (about 45 s here): starting a local Ray cluster and two actors.
@pytest.mark.slow
@pytest.mark.skipif(cpu_threads_per_worker(2) != 1, reason="bit-equality needs 1 thread per worker (2-core machine)")
def test_ray_local_cluster_equals_single_process(single_process_store, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'dift-fast[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is an optional extra (pip install 'dift-fast[ray]')")
    root, ref, config = single_process_store
    out = tmp_path / "store"
    try:
        summary = extract_to_store(StoreJob([str(root) + "/**/*.*"], str(out), config, ray_address="local",
                                            ray_workers=2, batch_size=2))
    finally:
        ray.shutdown()
    assert summary.written == N_IMAGES and len(summary.failed) == 2
    writers = [p for p in (out / "manifests").iterdir() if p.stat().st_size]
    # One manifest per actor that received work; Ray may hand every batch of a small job to one actor.
    assert 1 <= len(writers) <= 2
    assert_stores_equal(out, Path(ref))
