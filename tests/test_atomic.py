"""dift_fast.atomic: whole files or none, unpredictable temporary names, no write through a planted symlink, umask."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch

from dift_fast import atomic
from dift_fast.atomic import atomic_folder, atomic_path, write_atomic

TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<token>[0-9a-f]{32})\.tmp$")


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(value: int) -> None:
        os.umask(value)

    yield set_to
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "out.bin"  # the folder is created
    write_atomic(target, b"old")
    write_atomic(target, "new text")
    assert target.read_text() == "new text"
    assert os.listdir(target.parent) == ["out.bin"]


@pytest.mark.parametrize("helper", ["write_atomic", "atomic_path"])
def test_planted_symlinks_do_not_redirect_the_write(tmp_path, helper):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "feats.safetensors"
    # The old predictable temporary names (".NAME.tmp<pid>" beside the target, "NAME.tmp" for plans/manifests)
    # and the target itself, all pointing at the victim.
    planted = [folder / f".{target.name}.tmp{os.getpid()}", folder / f"{target.name}.tmp", target]
    for link in planted:
        link.symlink_to(victim)
    if helper == "write_atomic":
        write_atomic(target, b"new")
    else:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == b"new"  # the link at the target was replaced


def test_planted_symlink_in_the_temporary_folder_is_not_followed(tmp_path):
    """A store writes under its tmp/ folder: a symlink planted there is neither followed nor removed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store_tmp = tmp_path / "store" / "tmp"
    store_tmp.mkdir(parents=True)
    target = tmp_path / "store" / "features" / "ab.safetensors"
    old_style = store_tmp / f"{target.name}.{os.getpid()}.deadbeef"  # the previous helper's name pattern
    old_style.symlink_to(victim)
    write_atomic(target, b"data", tmp_dir=store_tmp)
    assert victim.read_text() == "precious" and target.read_bytes() == b"data"
    assert os.listdir(store_tmp) == [old_style.name]  # only the planted link is left there


def test_temporary_names_are_unpredictable(tmp_path):
    names = []
    for _ in range(20):
        with atomic_path(tmp_path / "x.bin") as tmp:
            names.append(tmp.name)
            tmp.write_bytes(b"1")
    tokens = []
    for name in names:
        m = TEMP.match(name)
        assert m and m["target"] == "x.bin", name
        tokens.append(m["token"])
    assert len(set(tokens)) == len(tokens)  # 128 random bits each: no repeats, no pid or counter
    assert str(os.getpid()) not in "".join(names)


def test_an_existing_name_is_refused_even_when_guessed(tmp_path, monkeypatch):
    """O_EXCL: if an attacker did guess the name, the write fails instead of following the link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "0" * (2 * n))
    (tmp_path / f".out.bin.{'0' * 32}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "out.bin", b"new")
    assert victim.read_text() == "precious" and not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask, mask):
    from safetensors.torch import save_file

    umask(mask)
    write_atomic(tmp_path / "a.json", "{}")
    with atomic_path(tmp_path / "b.safetensors") as tmp:  # safetensors itself writes 0600 files
        save_file({"x": torch.zeros(2)}, str(tmp))
    with atomic_folder(tmp_path / "model") as folder:
        (folder / "config.json").write_text("{}")
    assert mode(tmp_path / "a.json") == 0o666 & ~mask
    assert mode(tmp_path / "b.safetensors") == 0o666 & ~mask
    assert mode(tmp_path / "model") == 0o777 & ~mask


def test_feature_files_and_indexes_follow_the_umask(tmp_path, umask):
    from dift_fast.config import DiftConfig
    from dift_fast.io import load_features, save_features

    umask(0o027)
    path = save_features(tmp_path / "f.safetensors", torch.zeros(1, 4, 2, 3), ["a.png"], [(24, 16)],
                         DiftConfig(model="tiny-random"), [7])
    assert mode(path) == 0o640 and load_features(path).names == ["a.png"]
    pytest.importorskip("faiss", reason="FeatureIndex needs faiss (dift-fast[faiss])")
    from dift_fast.index import FeatureIndex

    index = FeatureIndex.build(torch.randn(10, 4), torch.arange(10), device="cpu")
    assert mode(index.save(tmp_path / "i.index")) == 0o640


def test_a_failing_writer_leaves_the_old_target_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]

    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", no_space)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_a_symlink_swapped_in_for_the_temporary_is_not_committed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="symlink"), atomic_path(target) as tmp:
        tmp.unlink()
        tmp.symlink_to(victim)
    assert not target.exists() and victim.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["victim.txt"]  # the link at the temporary name was removed


def test_atomic_folder_commits_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(ValueError), atomic_folder(target) as tmp:
        (tmp / "unet").mkdir()
        raise ValueError("build failed")
    assert os.listdir(tmp_path) == []
    with atomic_folder(target) as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert (target / "model_index.json").read_text() == "{}"
    with pytest.raises(FileExistsError), atomic_folder(target) as tmp:  # another process built it meanwhile
        (tmp / "model_index.json").write_text("{}")
    assert os.listdir(tmp_path) == ["model"]
