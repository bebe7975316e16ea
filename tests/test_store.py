"""Feature store: layout, resume, failures, config mismatch, full disk, concurrent readers, PCA, HDF5, CLI."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import assert_stores_equal, make_images

from dift_fast import atomic as atomic_mod
from dift_fast.cli import main
from dift_fast.images import prepare_image
from dift_fast.store import (
    FeatureStore,
    StoreConfigError,
    StoreJob,
    StoreLockedError,
    export_h5,
    extract_to_store,
)
from dift_fast.store import store as store_mod
from dift_fast.store.pca import Pca, fit_pca, sample_names
from dift_fast.store.pipeline import StorePipeline
from dift_fast.store.sources import find_images

N_IMAGES = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("imgs"), N_IMAGES)


def _job(images: Path, out: Path, extractor, **kw) -> StoreJob:
    return StoreJob(inputs=[str(images)], out=str(out), config=extractor.config, **kw)


@pytest.fixture(scope="module")
def reference(images, tiny_extractor_factory, tmp_path_factory) -> Path:
    """An uninterrupted fp16 run: the store the other runs must equal."""
    out = tmp_path_factory.mktemp("ref") / "store"
    extractor = tiny_extractor_factory()
    summary = extract_to_store(_job(images, out, extractor), extractor)
    assert summary.written == N_IMAGES and len(summary.failed) == 2
    return out


def test_store_holds_the_extractor_features(images, tiny_extractor_factory, tmp_path):
    extractor = tiny_extractor_factory()
    out = tmp_path / "s"
    summary = extract_to_store(_job(images, out, extractor, store_dtype="fp32", decode_workers=0), extractor)
    store = FeatureStore.open(out)
    source = find_images([str(images)])
    good = [n for n in source.names if "img" in n]
    assert store.names() == sorted(good) and summary.written == len(good)
    for name in good:
        prepared = prepare_image(images / name, extractor.config.image_size, name=name)
        expected = extractor.extract_prepared([prepared])
        assert torch.equal(store.get(name), expected.features[0])  # fp32 store: bit-identical
        entry = store.entries()[name]
        assert entry.original_size == prepared.original_size and entry.image_key == prepared.key
        assert store.path(name).relative_to(out).parts[0] == "features"
    fails = store.failures()
    assert set(fails) == {"b/text.png", "a/truncated.png"}
    assert "not an image" in fails["b/text.png"] and "truncated" in fails["a/truncated.png"]
    # One image is read from its own file: deleting another image's file does not matter.
    os.unlink(store.path(good[0]))
    assert store.get(good[1]).shape[0] == 64
    with pytest.raises(KeyError, match="not in store"):
        store.get(good[0])


def test_rerun_skips_done_images_and_matches_reference(images, reference, tiny_extractor_factory, tmp_path):
    extractor = tiny_extractor_factory()
    out = tmp_path / "s"
    source = find_images([str(images)])
    # A first run that only got half the images (as if it had been stopped).
    store = FeatureStore.create_or_open(out, FeatureStore.open(reference).meta["identity"], extractor.config.to_dict())
    StorePipeline(extractor, store, source).run(list(source.names[:3]))
    store.unlock()  # create_or_open returned it locked, as a writer
    summary = extract_to_store(_job(images, out, extractor), extractor)
    assert summary.skipped + summary.adopted == sum("img" in n for n in source.names[:3])
    assert summary.written == N_IMAGES - summary.skipped
    assert_stores_equal(out, reference)
    again = extract_to_store(_job(images, out, extractor), extractor)
    assert again.written == 0 and again.skipped == N_IMAGES  # failures are retried, and fail again
    assert_stores_equal(out, reference)


def test_orphan_file_without_manifest_line_is_adopted(images, reference, tiny_extractor_factory, tmp_path):
    """A writer killed between the rename and the manifest append: the next run adopts the complete file."""
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    for f in (out / "manifests").iterdir():
        lines = f.read_bytes().split(b"\n")
        f.write_bytes(b"\n".join(lines[:2]) + b'\n{"name": "torn')  # a torn last line, then nothing
    extractor = tiny_extractor_factory()
    summary = extract_to_store(_job(images, out, extractor), extractor)
    assert summary.adopted == N_IMAGES - 2 and summary.written == 0
    assert_stores_equal(out, reference)


def test_different_config_is_refused_unless_overwrite(images, reference, tiny_extractor_factory, tmp_path, capsys):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    other = tiny_extractor_factory(ensemble_size=3)
    with pytest.raises(StoreConfigError, match=r"ensemble_size: store has 2, this run 3.*--overwrite"):
        extract_to_store(_job(images, out, other), other)
    with pytest.raises(StoreConfigError, match="store_dtype: store has 'fp16', this run 'fp32'"):
        extract_to_store(_job(images, out, other, store_dtype="fp32"), other)
    code = main(["extract", str(images), "--out", str(out), "--model", other.config.model, "--ensemble-size", "3",
                 "--image-size", "64x48", "--device", "cpu", "--no-progress"])
    assert code == 2 and "different settings" in capsys.readouterr().err
    assert FeatureStore.open(out).meta["identity"]["ensemble_size"] == 2  # untouched
    summary = extract_to_store(_job(images, out, other, overwrite=True), other)
    assert summary.skipped == 0 and summary.written == N_IMAGES
    assert FeatureStore.open(out).meta["identity"]["ensemble_size"] == 3
    with pytest.raises(Exception, match="--resume"):
        extract_to_store(_job(images, tmp_path / "none", other, resume=True), other)


class _FullDiskOs:
    """``os`` for the store module: the disk fills up halfway through the ``fail_at``-th feature file."""

    def __init__(self, store_root: Path, fail_at: int) -> None:
        self.tmp = os.path.realpath(store_root / "tmp") + "/"
        self.fail_at, self.seen, self.full = fail_at, set(), False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full:  # every later write of the store (manifests, failure log) finds the disk full too
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(self.tmp) and ".safetensors." in target:
            self.seen.add(target)
            if len(self.seen) >= self.fail_at:
                self.full = True
                return os.write(fd, bytes(data)[: len(data) // 2])  # half the file lands, the next write fails
        return os.write(fd, data)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the fault injection reads /proc/self/fd (Linux)")
def test_full_disk_stops_cleanly_and_rerun_completes(images, reference, tiny_extractor_factory, tmp_path, monkeypatch,
                                                      capsys):
    out = tmp_path / "s"
    model = tiny_extractor_factory().config.model
    argv = ["extract", str(images), "--out", str(out), "--model", model, "--ensemble-size", "2", "--image-size",
            "64x48", "--device", "cpu", "--no-progress"]
    fake = _FullDiskOs(out, fail_at=3)
    monkeypatch.setattr(store_mod, "os", fake)  # manifest and failure-log appends
    monkeypatch.setattr(atomic_mod, "os", fake)  # feature files (dift_fast.atomic writes them)
    assert main(argv) == 3
    assert fake.full and "disk full" in capsys.readouterr().err
    monkeypatch.undo()
    store = FeatureStore.open(out)
    assert list((out / "tmp").iterdir()) == []  # the half-written file was removed
    files = sorted(p.relative_to(out).as_posix() for p in (out / "features").rglob("*.safetensors"))
    entries = store.entries()
    assert sorted(e.file for e in entries.values()) == files and len(files) == 2  # every file complete and listed
    for name in entries:
        store.get(name)
    assert main(argv) == 1  # the bad images fail again; everything else is written
    assert_stores_equal(out, reference)


class _SlowExtractor:
    """The tiny extractor with a pause per call, so readers get to look at the store mid-run."""

    def __init__(self, inner, pause: float) -> None:
        self._inner, self._pause = inner, pause

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def extract_prepared(self, *a, **kw):
        time.sleep(self._pause)
        return self._inner.extract_prepared(*a, **kw)


def test_readers_see_consistent_store_while_writer_runs(images, reference, tiny_extractor_factory, tmp_path):
    out = tmp_path / "s"
    extractor = _SlowExtractor(tiny_extractor_factory(), 0.15)
    errors: list[BaseException] = []

    def write():
        try:
            extract_to_store(_job(images, out, extractor, decode_workers=1), extractor)
        except BaseException as err:
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    seen: dict[str, torch.Tensor] = {}
    counts, lock_refused = [], False
    while writer.is_alive():
        try:
            store = FeatureStore.open(out)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        entries = store.entries()
        counts.append(len(entries))
        for name in entries:  # every listed image is complete and readable
            seen[name] = store.get(name)
        if 0 < len(entries) < N_IMAGES and not lock_refused:
            with pytest.raises(StoreLockedError):
                store.lock()
            lock_refused = True
        time.sleep(0.02)
    writer.join()
    assert not errors
    assert lock_refused and any(0 < c < N_IMAGES for c in counts)  # we did look mid-run
    assert counts == sorted(counts)
    final = FeatureStore.open(out)
    for name, feats in seen.items():
        assert torch.equal(feats, final.get(name))
    assert_stores_equal(out, reference)


def test_pca_store(images, tiny_extractor_factory, tmp_path):
    extractor = tiny_extractor_factory()
    out = tmp_path / "s"
    summary = extract_to_store(_job(images, out, extractor, pca_dim=8, pca_sample=4, store_dtype="fp32"), extractor)
    store = FeatureStore.open(out)
    assert summary.written == N_IMAGES and store.meta["identity"]["pca_dim"] == 8
    pca = store.pca
    ratio = pca.explained_variance_ratio
    sample = sample_names(find_images([str(images)]).names, 4)
    assert pca.components.shape == (8, 64) and pca.sample_size == sum("img" in n for n in sample) == 3
    assert 0 < float(ratio.sum()) <= 1 and bool((ratio[:-1] >= ratio[1:]).all())
    assert torch.allclose(pca.components @ pca.components.T, torch.eye(8, dtype=torch.float64), atol=1e-10)
    name = store.names()[0]
    raw = extractor.extract_prepared([prepare_image(images / name, extractor.config.image_size, name=name)])
    assert torch.equal(store.get(name), pca.project(raw.features[0]))
    assert "pca_explained_variance" in store.info()
    # Refitting on the same sample gives the same PCA (a restarted run projects identically).
    maps = [torch.randn(16, 3, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    a, b = fit_pca(maps, 5), fit_pca(list(maps), 5)
    assert torch.equal(a.components, b.components)
    a.save(tmp_path / "p.safetensors", tmp_path / "tmp")
    assert torch.equal(Pca.load(tmp_path / "p.safetensors").components, a.components)
    with pytest.raises(ValueError, match="between 1 and"):
        fit_pca(maps, 17)
    assert sample_names([f"n{i}" for i in range(10)], 3) == ["n0", "n4", "n9"]


def test_hdf5_export_is_hloc_layout(reference, tmp_path, capsys):
    h5py = pytest.importorskip("h5py", reason="HDF5 export needs h5py (dift-fast[eval])")
    store = FeatureStore.open(reference)
    out = export_h5(store, tmp_path / "feats.h5")
    with h5py.File(out, "r") as fd:
        names = []
        fd.visititems(lambda n, obj: names.append(n.rsplit("/", 1)[0]) if n.endswith("dense_features") else None)
        assert sorted(names) == store.names()
        for name in store.names():
            np.testing.assert_array_equal(fd[name]["dense_features"][()], store.get(name).numpy())
            assert tuple(fd[name]["image_size"][()]) == store.entries()[name].original_size
    with pytest.raises(FileExistsError):
        export_h5(store, out)
    assert main(["store", "export-h5", str(reference), os.fspath(out), "--overwrite"]) == 0  # not str(): its repr
    assert main(["store", "info", str(reference), "--failures"]) == 0
    text = capsys.readouterr().out
    assert '"images": 6' in text and "failed: b/text.png" in text


class _FakeOomExtractor:
    """Raises CUDA out-of-memory above ``limit`` images per call, else returns constant features."""

    def __init__(self, config, limit: int) -> None:
        self.config, self.limit, self.device, self.calls = config, limit, torch.device("cpu"), []

    def extract_prepared(self, prepared, *a, **kw):
        from dift_fast.extractor import FeatureBatch

        self.calls.append(len(prepared))
        if len(prepared) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        feats = torch.stack([p.pixels.mean() * torch.ones(4, 2, 2) for p in prepared])
        return FeatureBatch(feats, [p.name for p in prepared], [p.original_size for p in prepared],
                            [p.key for p in prepared])


def _bare_store(path: Path) -> FeatureStore:
    return FeatureStore.create_or_open(path, {"store_dtype": "fp32", "pca_dim": None})


def test_out_of_memory_halves_the_batch(images, tiny_extractor_factory, tmp_path):
    source = find_images([str(images)])
    good = [n for n in source.names if "img" in n]
    fake = _FakeOomExtractor(tiny_extractor_factory().config, limit=2)
    result = StorePipeline(fake, _bare_store(tmp_path / "s"), source, batch_size=5, check_identity=False).run(good)
    assert result.written == len(good) and result.batch_size == 2
    assert fake.calls[:3] == [5, 2, 2]
    store = FeatureStore.open(tmp_path / "s")
    assert store.names() == sorted(good) and store.get(good[0]).shape == (4, 2, 2)
    with pytest.raises(RuntimeError, match="one image per batch"):
        StorePipeline(_FakeOomExtractor(fake.config, limit=0), _bare_store(tmp_path / "t"), source,
                      batch_size=1, check_identity=False).run(good)


def test_find_images_names_and_globs(images):
    src = find_images([str(images)])
    assert list(src.names) == sorted(src.names) and all("\\" not in n for n in src.names)
    assert "a/deep/img03.png" in src.names and len(src.names) == N_IMAGES + 2
    globbed = find_images([str(images / "a" / "*.png")])
    assert Path(globbed.root) == images / "a" and "img01.png" in globbed.names
    with pytest.raises(FileNotFoundError):
        find_images([str(images / "nothing*.png")])
