"""SIGKILL at random moments, resume, and compare with an uninterrupted run: the stores must be equal."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_helpers import assert_stores_equal, make_images

from dift_fast.store import FeatureStore

N_IMAGES = 10
KILLS = 4


class Zygote:
    """tests/store_zygote.py: forks one extraction child per run, so a run costs no interpreter start."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same threads in every child
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("store_zygote.py"))], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=Path(__file__).parent,
        )

    def start(self, root: Path, store: Path, model: Path) -> int:
        self.proc.stdin.write(f"run {root} {store} {model}\n")
        self.proc.stdin.flush()
        kind, pid = self.proc.stdout.readline().split()
        assert kind == "pid"
        return int(pid)

    def wait(self, pid: int) -> int:
        kind, got, code = self.proc.stdout.readline().split()
        assert (kind, int(got)) == ("exit", pid)
        return int(code)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _count(store: Path) -> int:
    try:
        return len(FeatureStore.open(store))
    except FileNotFoundError:
        return 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the test runner forks extraction children (POSIX only)")
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    root = make_images(tmp_path / "imgs", N_IMAGES)
    zygote = Zygote()
    try:
        ref = tmp_path / "reference"
        assert zygote.wait(zygote.start(root, ref, tiny_model_dir)) == 1  # 1: the two bad images failed

        rng = random.Random(7)
        out = tmp_path / "killed"
        mid_run_kills = 0
        for k in range(KILLS):
            pid = zygote.start(root, out, tiny_model_dir)
            before = _count(out)
            if k == 0:  # early: while the run loads the model or decodes its first batch
                time.sleep(rng.uniform(0.0, 0.5))
            else:  # once the run has stored a random number of further images, after a random delay
                target = min(N_IMAGES - 1, before + rng.randint(1, 3))
                deadline = time.perf_counter() + 60
                while _count(out) < target and time.perf_counter() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.03))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # the run ended first
                pass
            code = zygote.wait(pid)
            after = _count(out)
            mid_run_kills += code == -signal.SIGKILL and before < after < N_IMAGES
            if after:  # after every kill, the store reads back whole
                store = FeatureStore.open(out)
                for name in store.names():
                    store.get(name)
        assert zygote.wait(zygote.start(root, out, tiny_model_dir)) == 1  # the resumed run finishes
    finally:
        zygote.close()
    assert mid_run_kills >= 1, "no kill landed between two stored images; the test did not test resuming"
    store = FeatureStore.open(out)
    assert len({e.file for e in store.entries().values()}) == N_IMAGES
    assert len(list((out / "manifests").iterdir())) >= 2  # written by several (killed) runs
    assert list((out / "tmp").iterdir()) == []  # files of killed writers were cleared
    assert_stores_equal(out, ref)
