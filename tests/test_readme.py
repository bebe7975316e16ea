"""The README's offline examples run as written: every shell block that uses ``tiny-random`` and the Python API block.

Run from a scratch folder holding a copy of ``examples/`` (the README's commands are written for the repository
root), with the hub offline. Two substitutions, both stated in the README: ``scripts/run.sh ARGS`` is
``python -m dift_fast ARGS`` (run.sh sets up .venv, then runs the CLI), and the Python block's default model becomes
``tiny-random`` (SD 2.1 cannot be downloaded here). ``pip install`` lines are not run (no network).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: from a ``#`` at the start or after whitespace, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands(block: str) -> list[str]:
    """The block's command lines, without comments."""
    return [c.strip() for c in map(strip_comment, block.splitlines()) if c.strip()]


def offline_shell_commands() -> list[str]:
    cmds = []
    for block in blocks("bash"):
        if "tiny-random" not in block:
            continue
        for cmd in commands(block):
            if cmd.startswith("pip "):
                continue  # installing needs a package index: not what this test checks
            cmds.append(re.sub(r"^scripts/run\.sh\b", f"{sys.executable} -m dift_fast", cmd))
    return cmds


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return tmp_path, env


def test_readme_has_the_newcomer_path():
    cmds = offline_shell_commands()
    assert any(c.startswith("dift-fast match-pairs ") and "--model tiny-random" in c for c in cmds)
    assert any("import_into_colmap" in c for c in cmds)


def test_readme_shell_examples_run_as_written(scratch):
    pytest.importorskip("h5py", reason="match-pairs writes HDF5 (pip install 'dift-fast[colmap]')")
    pytest.importorskip("pycolmap", reason="the README imports into COLMAP (pip install 'dift-fast[colmap]')")
    folder, env = scratch
    for cmd in offline_shell_commands():
        out = subprocess.run(["bash", "-c", cmd], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    # what hloc reads back (its own access patterns) from the files the newcomer path wrote
    sys.path.insert(0, str(Path(__file__).parent))
    from hloc_readers import get_keypoints, get_matches, list_h5_names

    assert sorted(list_h5_names(folder / "features.h5")) == ["cat.jpg", "cat_turned.jpg"]
    kps = get_keypoints(folder / "features.h5", "cat.jpg")
    matches, scores = get_matches(folder / "matches.h5", "cat.jpg", "cat_turned.jpg")
    assert kps.ndim == 2 and kps.shape[1] == 2 and len(matches) > 0 and np.isfinite(scores).all()
    assert (folder / "colmap.db").is_file()


def test_readme_python_api_example_runs(scratch):
    pytest.importorskip("matplotlib", reason="the example draws a picture (pip install 'dift-fast[viz]')")
    folder, env = scratch
    (code,) = [b for b in blocks("python") if "match_pair(" in b]
    code = code.replace('from_pretrained(preset="spair")', 'from_pretrained("tiny-random", preset="spair")')
    assert '"tiny-random"' in code, "the README's API example no longer calls from_pretrained(preset=...)"
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (folder / "dense.png").is_file()
