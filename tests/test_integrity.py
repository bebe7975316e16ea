"""Nothing the user owns is deleted or mixed, and every input is checked (issue 11 §2-3).

Stores under concurrent writers, --overwrite into foreign folders, a full disk while creating a store, damaged
feature files; decompression bombs, fp16 overflow in file mode, tensors, points on the command line, index files.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast import atomic as atomic_mod
from dift_fast.cli import main
from dift_fast.images import ImageError, prepare_image
from dift_fast.io import load_features
from dift_fast.store import FeatureStore, StoreCorruptError, StoreJob, StoreLockedError, export_h5, extract_to_store

TINY = ["--ensemble-size", "2", "--image-size", "64x48", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(5)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _argv(images: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["extract", str(images), "--out", str(out), "--model", str(model), *TINY, *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- §2: never delete or mix what the user owns -------------------------------------------------------------------


class _SlowExtractor:
    """The tiny extractor with a pause per call, so a second command can run while this one writes."""

    def __init__(self, inner, pause: float) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_pause", pause)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def extract_prepared(self, *a, **kw):
        time.sleep(self._pause)
        return self._inner.extract_prepared(*a, **kw)


def test_overwrite_never_wipes_a_running_writers_store(
    images, tiny_model_dir, tiny_extractor_factory, tmp_path, capsys
):
    out = tmp_path / "store"
    writer = _SlowExtractor(tiny_extractor_factory(), 0.3)
    errors: list[BaseException] = []

    def write():
        try:
            extract_to_store(
                StoreJob(inputs=[str(images)], out=str(out), config=writer.config, decode_workers=0), writer
            )
        except BaseException as err:  # handed to the test
            errors.append(err)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while not (out / "store.json").is_file():
            time.sleep(0.01)
        other = tiny_extractor_factory(t=100)  # another timestep: --overwrite would start a new store
        with pytest.raises(StoreLockedError, match="another process is writing"):
            extract_to_store(StoreJob(inputs=[str(images)], out=str(out), config=other.config, overwrite=True), other)
        assert main(_argv(images, out, tiny_model_dir, "--t", "100", "--overwrite")) == 2
        assert "another process is writing" in capsys.readouterr().err
    finally:
        thread.join()
    assert not errors
    store = FeatureStore.open(out)
    assert store.meta["identity"]["t"] == 261 and len(store) == 4  # the running writer's store, complete
    for name in store.names():
        store.get(name)


def test_overwrite_refuses_a_folder_that_is_not_a_store(images, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "my-files"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = _snapshot(out)
    assert main(_argv(images, out, tiny_model_dir, "--overwrite")) == 2
    assert "is not a feature store; nothing was written or deleted" in capsys.readouterr().err
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["sub", "thesis.tex"]
    # A folder holding only a "tmp" of the user's (not our temporary files) is not an empty one either.
    mine = tmp_path / "only-tmp"
    (mine / "tmp").mkdir(parents=True)
    (mine / "tmp" / "draft.txt").write_text("keep me")
    assert main(_argv(images, mine, tiny_model_dir)) == 2
    assert (mine / "tmp" / "draft.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["tmp"]


class _NoSpaceForStoreJson:
    """``os`` for dift_fast.atomic: every write of a store.json temporary file finds the disk full."""

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if ".store.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the fault injection reads /proc/self/fd (Linux)")
@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_while_creating_a_store_leaves_the_folder_clean(
    images, tiny_model_dir, tmp_path, monkeypatch, capsys, existing
):
    out = tmp_path / "store"
    if existing:
        out.mkdir()  # the user made the (empty) folder: it stays, empty
    monkeypatch.setattr(atomic_mod, "os", _NoSpaceForStoreJson())
    assert main(_argv(images, out, tiny_model_dir)) == 3
    assert "disk full while creating the store" in capsys.readouterr().err  # "... nothing was left there"
    monkeypatch.undo()
    assert out.is_dir() == existing and (not existing or list(out.iterdir()) == [])  # no tmp/, no lock file
    assert main(_argv(images, out, tiny_model_dir)) == 0  # "free space and rerun" works
    assert len(FeatureStore.open(out)) == 4


def test_full_disk_in_file_mode_exits_3_and_writes_nothing(images, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    def full(*args, **kwargs):  # what safetensors raises when the disk fills up (its own error type, not OSError)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "f.safetensors"
    files = sorted(str(p) for p in images.glob("*.png"))
    assert main(["extract", *files, "--out", str(out), "--model", str(tiny_model_dir), *TINY]) == 3
    assert "disk full while writing" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no feature file, no temporary file


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_stored_feature_file_is_detected_and_named(images, tiny_model_dir, tmp_path, capsys):
    h5py = pytest.importorskip("h5py", reason="HDF5 export needs h5py (dift-fast[eval])")
    out = tmp_path / "store"
    assert main(_argv(images, out, tiny_model_dir, "--dtype-store", "fp32")) == 0
    store = FeatureStore.open(out)
    names = store.names()
    _flip_byte(store.path(names[0]), -3)  # in the tensor data
    header_len = int.from_bytes(store.path(names[1]).read_bytes()[:8], "little")
    text = store.path(names[1]).read_bytes()[8 : 8 + header_len]
    _flip_byte(store.path(names[1]), 8 + text.index(b'"image_key":"') + 14)  # a digit of the noise key
    for name in names[:2]:
        with pytest.raises(StoreCorruptError, match=rf"image '{name}': feature file .* is damaged"):
            store.get(name)
    assert torch.isfinite(store.get(names[2])).all()
    result = export_h5(store, tmp_path / "all.h5")
    assert sorted(result.skipped) == names[:2] and result.images == 2
    with h5py.File(tmp_path / "all.h5") as f:
        assert set(f) == {n for n in names[2:]}
    capsys.readouterr()
    assert main(["store", "export-h5", str(out), str(tmp_path / "cli.h5")]) == 1
    err = capsys.readouterr().err
    assert names[0] in err and names[1] in err and "checksum mismatch" in err
    # The advice works: delete the damaged files, rerun, and they are recomputed.
    for name in names[:2]:
        store.path(name).unlink()
    assert main(_argv(images, out, tiny_model_dir, "--dtype-store", "fp32")) == 0
    for name in names:
        store.get(name)


# -- §3: every input is checked ------------------------------------------------------------------------------------


@pytest.fixture
def bomb_limit(monkeypatch):
    """PIL's decompression-bomb limit lowered to 10,000 pixels (the good images have 3,072)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)


def _bombs(folder: Path) -> tuple[Path, Path]:
    """One image PIL refuses (over twice the limit) and one it only warns about (between the limit and twice it)."""
    folder.mkdir(parents=True, exist_ok=True)
    error, warning = folder / "bomb_error.png", folder / "bomb_warning.png"
    Image.new("RGB", (200, 200)).save(error)  # 40,000 pixels > 2 x 10,000: DecompressionBombError
    Image.new("RGB", (120, 100)).save(warning)  # 12,000 pixels: DecompressionBombWarning
    return error, warning


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_one_bad_image_in_file_mode(images, tiny_model_dir, tmp_path, bomb_limit, capsys):
    error, warning = _bombs(tmp_path / "bombs")
    good = sorted(str(p) for p in images.glob("*.png"))
    out = tmp_path / "f.safetensors"
    assert (
        main(
            [
                "extract",
                good[0],
                str(error),
                good[1],
                str(warning),
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                *TINY,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "bomb_error.png" in err and "bomb_warning.png" in err and "decompression bomb" in err
    assert load_features(out).names == good[:2]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_one_bad_image_in_store_mode(images, tiny_model_dir, tmp_path, bomb_limit):
    import shutil

    root = shutil.copytree(images, tmp_path / "root")
    _bombs(root)
    out = tmp_path / "store"
    assert main(_argv(root, out, tiny_model_dir)) == 1
    store = FeatureStore.open(out)
    assert len(store) == 4 and set(store.failures()) == {"bomb_error.png", "bomb_warning.png"}
    assert all("decompression bomb" in r for r in store.failures().values())


def test_fp16_overflow_in_file_mode_loses_only_the_affected_image(
    images, tiny_extractor_factory, tmp_path, monkeypatch, capsys
):
    import dift_fast.cli.extract as extract_cli
    from dift_fast.extractor import NonFiniteFeaturesError

    inner = tiny_extractor_factory(batch_size=2)
    good = sorted(str(p) for p in images.glob("*.png"))
    culprit = good[1]

    class Overflowing:  # the tiny model in fp32 cannot overflow; this one does for one image, as fp16 SD can
        def __getattr__(self, name):
            return getattr(inner, name)

        def extract_prepared(self, prepared, *a, **kw):
            if any(p.name == culprit for p in prepared):
                raise NonFiniteFeaturesError(f"non-finite features for images {[p.name for p in prepared]}")
            return inner.extract_prepared(prepared, *a, **kw)

    monkeypatch.setattr(extract_cli, "load_extractor", lambda args: Overflowing())
    out = tmp_path / "f.safetensors"
    assert main(["extract", *good, "--out", str(out), "--model", "tiny-random", *TINY]) == 1
    assert "non-finite" in capsys.readouterr().err
    saved = load_features(out)
    assert saved.names == [good[0], *good[2:]] and saved.extra["failed"] == [culprit]
    expected = inner.extract_prepared([prepare_image(good[0], (64, 48), name=good[0])]).features[0]
    assert torch.equal(saved.features[0], expected)


def test_uint8_tensors_are_pixels_and_out_of_range_tensors_are_refused(tiny_extractor_factory):
    ext = tiny_extractor_factory()
    rng = np.random.default_rng(9)
    hwc = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)  # what torchvision.io.read_image returns
    from_array = ext.extract(hwc)
    assert torch.equal(ext.extract(chw), from_array)  # same pixels, same preprocessing, same noise
    assert torch.equal(ext.extract(torch.stack([chw, chw]))[1], from_array[0])  # [B, 3, H, W] uint8
    prepared = prepare_image(chw, None)
    assert prepared.key == prepare_image(hwc, None).key and prepared.pixels.abs().max() <= 1
    floats = chw.float()  # 0..255 floats: the classic mistake
    with pytest.raises(ImageError, match=r"outside \[-1, 1\] \(it looks like 0\.\.255 pixels"):
        ext.extract(floats)
    with pytest.raises(ImageError, match=r"torch\.bool tensor is not an image"):
        ext.extract(chw > 128)
    with pytest.raises(ImageError, match=r"torch\.int64 tensor is not an image"):
        ext.extract(chw.long())
    with pytest.raises(ImageError, match="NaN or Inf"):
        ext.extract(torch.full((3, 48, 64), float("nan")))
    with pytest.raises(ImageError, match=r"outside \[-1, 1\]"):
        ext.extract(torch.full((3, 48, 64), 1.5))
    ok = ext.extract(floats / 127.5 - 1)  # the documented float form is accepted
    assert ok.shape == from_array.shape


@pytest.mark.parametrize("point", ["inf,3", "3,nan", "1e30,2", "1e400,2", "x,1", "1,2,3"])
def test_cli_points_are_clear_errors(point, images, tmp_path, capsys):
    good = sorted(str(p) for p in images.glob("*.png"))
    assert main(["match", good[0], good[1], "--points", point, "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "--points" in err and "Traceback" not in err


def test_a_damaged_index_file_is_refused_before_faiss_reads_it(images, tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("faiss", reason="the index needs faiss (dift-fast[faiss])")
    from dift_fast.index import FeatureIndex

    files = sorted(str(p) for p in images.glob("*.png"))
    feats, index = tmp_path / "f.safetensors", tmp_path / "g.index"
    assert main(["extract", *files, "--out", str(feats), "--model", str(tiny_model_dir), *TINY]) == 0
    assert main(["index", "build", str(feats), "--out", str(index), "--level", "dense", "--device", "cpu"]) == 0
    size = index.stat().st_size
    data = bytearray(index.read_bytes())
    data[size - 40 : size - 36] = b"\xff\xff\xff\x7f"  # a 4-byte edit inside faiss' bytes
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged: its checksum does not match"):
        FeatureIndex.load(index, device="cpu")
    capsys.readouterr()
    assert (
        main(["index", "query", str(index), "--image", Path(files[0]).name, "--points", "5,5", "--device", "cpu"]) == 2
    )
    assert "rebuild it" in capsys.readouterr().err
