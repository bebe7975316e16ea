"""Content hashes of weight files and model folders, and their cache."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from dift_fast import hashing
from dift_fast.hashing import file_sha256, files_sha256, folder_sha256, hash_cache_path

_SHA256 = hashlib.sha256  # the real one (tests patch hashlib.sha256 to count or interfere)
OLD_NS = 1_600_000_000 * 10**9  # a modification time long past (outside the "racy" window)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_memory", {})


def _write(path, data: bytes, mtime_ns: int = OLD_NS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


class _CountingSha:
    """Stands in for hashlib.sha256 inside dift_fast.hashing and counts how many files are hashed."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return _SHA256()


def test_file_hash_is_the_sha256_of_its_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "_CHUNK", 7)  # many chunks: streaming must not change the digest
    data = os.urandom(1000)
    assert file_sha256(_write(tmp_path / "w.bin", data)) == hashlib.sha256(data).hexdigest()


def test_second_call_reads_nothing_from_memory_or_json(tmp_path, monkeypatch):
    path = _write(tmp_path / "w.safetensors", b"weights")
    counter = _CountingSha()
    monkeypatch.setattr(hashing.hashlib, "sha256", counter)
    first = file_sha256(path)
    assert counter.calls == 1
    assert file_sha256(path) == first and counter.calls == 1  # memory
    monkeypatch.setattr(hashing, "_memory", {})
    assert file_sha256(path) == first and counter.calls == 1  # JSON cache under cache_root()
    assert str(path.resolve()) in json.loads(hash_cache_path().read_text())["files"]


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    path = _write(tmp_path / "w.pt", b"aaaa")
    first = file_sha256(path)
    _write(path, b"bbbb", mtime_ns=OLD_NS + 10**9)  # same size, new mtime
    assert file_sha256(path) == hashlib.sha256(b"bbbb").hexdigest() != first


def test_a_rewrite_that_resets_size_and_mtime_is_hashed_again(tmp_path):
    """Tampering that restores size and mtime (os.utime) still changes the ctime, which is part of the key."""
    path = _write(tmp_path / "w.pt", b"aaaa")
    first = file_sha256(path)
    time.sleep(0.05)  # past the filesystem's timestamp granularity (a kernel tick), so the new ctime differs
    _write(path, b"bbbb")  # same size, mtime set back to the same OLD_NS, same inode (written in place)
    assert file_sha256(path) == hashlib.sha256(b"bbbb").hexdigest() != first


def test_recently_modified_files_are_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "fresh.pt"
    path.write_bytes(b"just written")  # mtime = now: a same-tick rewrite could go unnoticed
    counter = _CountingSha()
    monkeypatch.setattr(hashing.hashlib, "sha256", counter)
    file_sha256(path)
    file_sha256(path)
    assert counter.calls == 2
    assert not hash_cache_path().exists()


def test_corrupt_cache_file_costs_only_a_rehash(tmp_path):
    path = _write(tmp_path / "w.pt", b"data")
    hash_cache_path().parent.mkdir(parents=True)
    hash_cache_path().write_text("{broken")
    assert file_sha256(path) == hashlib.sha256(b"data").hexdigest()
    assert json.loads(hash_cache_path().read_text())["version"] == hashing._CACHE_VERSION  # rewritten


def test_a_file_changing_while_hashed_is_an_error(tmp_path, monkeypatch):
    path = _write(tmp_path / "growing.pt", b"x" * 100)
    monkeypatch.setattr(hashing, "_CHUNK", 10)

    class Appending:
        def __init__(self):
            self.inner, self.done = _SHA256(), False

        def update(self, chunk):
            if not self.done:
                self.done = True
                with open(path, "ab") as f:  # a download still writing
                    f.write(b"more")
            self.inner.update(chunk)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(hashing.hashlib, "sha256", Appending)
    with pytest.raises(RuntimeError, match=r"growing\.pt changed while it was being hashed"):
        file_sha256(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        file_sha256(tmp_path / "absent.pt")


def test_files_hash_is_order_independent_and_name_sensitive(tmp_path):
    a, b = _write(tmp_path / "a.bin", b"A"), _write(tmp_path / "sub" / "b.bin", b"B")
    h = files_sha256([a, b], tmp_path)
    assert h == files_sha256([b, a], tmp_path)
    assert h == files_sha256(["a.bin", "sub/b.bin"], tmp_path)  # relative to root
    expected = hashlib.sha256(
        f"a.bin\0{hashlib.sha256(b'A').hexdigest()}\nsub/b.bin\0{hashlib.sha256(b'B').hexdigest()}\n".encode()
    ).hexdigest()
    assert h == expected
    os.rename(b, tmp_path / "sub" / "c.bin")
    assert files_sha256([a, tmp_path / "sub" / "c.bin"], tmp_path) != h
    with pytest.raises(ValueError, match="listed twice"):
        files_sha256([a, a], tmp_path)
    with pytest.raises(ValueError, match="not inside"):
        files_sha256([a], tmp_path / "sub")
    with pytest.raises(ValueError, match="no files"):
        files_sha256([], tmp_path)


def test_folder_hash_covers_weight_files_only(tmp_path):
    root = tmp_path / "model"
    _write(root / "unet" / "diffusion_pytorch_model.safetensors", b"unet")
    _write(root / "vae" / "diffusion_pytorch_model.safetensors", b"vae")
    h = folder_sha256(root)
    _write(root / "unet" / "config.json", b"{}")  # not a weight file
    _write(root / ".cache" / "huggingface" / "x.safetensors", b"download metadata")  # hidden
    assert folder_sha256(root) == h
    _write(root / "vae" / "diffusion_pytorch_model.safetensors", b"VAE", mtime_ns=OLD_NS + 10**9)
    assert folder_sha256(root) != h


def test_folder_hash_follows_symlinked_files(tmp_path):
    blob = _write(tmp_path / "blobs" / "abc", b"weights")
    snap = tmp_path / "snapshot"
    (snap / "unet").mkdir(parents=True)
    (snap / "unet" / "model.safetensors").symlink_to(blob)
    real = tmp_path / "copy"
    _write(real / "unet" / "model.safetensors", b"weights")
    assert folder_sha256(snap) == folder_sha256(real)


def test_folder_errors(tmp_path):
    with pytest.raises(NotADirectoryError):
        folder_sha256(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no weight file"):
        folder_sha256(tmp_path / "empty")
