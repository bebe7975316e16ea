"""Missing optional packages are named, with the extra to install, before any work (and before any model loads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dift_fast.cli import main
from dift_fast.extras import EXTRAS, PACKAGE_NAMES, MissingExtraError, import_extra, require_extra

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _distribution(requirement: str) -> str:
    """``"opencv-python-headless>=4.8"`` -> ``"opencv-python-headless"``; ``"ray[data]>=2.9"`` -> ``"ray[data]"``."""
    for sep in ("<", ">", "=", "!", "~", ";", " "):
        requirement = requirement.split(sep)[0]
    return requirement


def test_extras_table_lists_what_pyproject_installs():
    declared = {k: v for k, v in _pyproject_extras().items() if k not in ("all", "dev")}
    assert set(declared) == set(EXTRAS)
    for extra, requirements in declared.items():
        packages = {_distribution(r) for r in requirements}
        assert {PACKAGE_NAMES.get(m, m) for m in EXTRAS[extra]} == packages, extra


def test_missing_module_names_package_feature_and_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingExtraError) as err:
        import_extra("cv2", "edit propagation")
    text = str(err.value)
    assert "edit propagation needs opencv-python-headless" in text
    assert "pip install 'dift-fast[eval]'" in text
    assert isinstance(err.value, ImportError) and isinstance(err.value, RuntimeError)
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        require_extra("nope", "x")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model (any backbone, any path) fails the test: the checks must come first."""
    from dift_fast import loading
    from dift_fast.backbones.base import Backbone
    from dift_fast.extractor import DiftExtractor

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the missing package was reported")

    monkeypatch.setattr(DiftExtractor, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(loading, "load_components", loaded)
    monkeypatch.setattr(Backbone, "load_components", loaded)


def _image(tmp_path: Path) -> str:
    import numpy as np
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return str(path)


# (missing module, the extra the message must name, the command line; {tmp} and {img} are filled in)
CASES = [
    ("matplotlib", "viz", "match {img} {img} --points 1,1 --out {tmp}/m.png --model tiny-random"),
    ("cv2", "eval", "eval hpatches --root {tmp} --model tiny-random"),
    ("skimage", "eval", "eval davis --root {tmp} --model tiny-random"),
    ("scipy", "eval", "eval jhmdb --root {tmp} --model tiny-random"),
    ("skimage", "eval", "eval synthetic-homography --model tiny-random"),
    ("onnx", "onnx", "export --out {tmp}/export --model tiny-random"),
    ("faiss", "faiss", "index build {tmp}/f.safetensors --out {tmp}/g.index"),
    ("faiss", "faiss", "index query {tmp}/g.index --image {img} --points 1,1"),
    ("h5py", "colmap", "match-pairs --images {tmp} --pairs {tmp}/p.txt --features {tmp}/f.h5 --matches {tmp}/m.h5 "
                       "--model tiny-random"),
    ("cv2", "eval", "edit {img} {img} {img} --out {tmp}/edited --model tiny-random"),
    ("h5py", "colmap", "store export-h5 {tmp} {tmp}/out.h5"),
    ("onnxruntime", "onnx", "extract {img} --out {tmp}/f.safetensors --backend onnxruntime --model tiny-random"),
    ("ray", "ray", "extract {tmp} --out {tmp}/store --ray local --model tiny-random"),
]


@pytest.mark.parametrize(("module", "extra", "command"), CASES, ids=[c[2].split(" {")[0] for c in CASES])
def test_cli_names_the_missing_extra_before_loading_a_model(module, extra, command, tmp_path, monkeypatch, no_model,
                                                             capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    argv = command.format(tmp=tmp_path, img=_image(tmp_path)).split()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pip install 'dift-fast[{extra}]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "f.safetensors").exists()


def test_options_that_need_nothing_optional_are_not_refused(tmp_path, monkeypatch, no_model, capsys):
    for module in ("cv2", "skimage", "scipy", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    # spair needs no optional package: it fails on its missing dataset, not on OpenCV
    assert main(["eval", "spair", "--root", str(tmp_path / "missing"), "--model", "tiny-random"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_missing_matplotlib_is_reported_in_a_fresh_interpreter(tmp_path):
    """The same check where matplotlib was never imported: before the model, exit code 2, no traceback."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["matplotlib"] = None
        from dift_fast.extractor import DiftExtractor
        def loaded(*a, **k):
            print("MODEL LOADED")
            raise SystemExit(99)
        DiftExtractor.from_pretrained = classmethod(loaded)
        from dift_fast.cli import main
        sys.exit(main(["match", {_image(tmp_path)!r}, {_image(tmp_path)!r}, "--points", "1,1", "--out",
                       {str(tmp_path / "m.png")!r}, "--model", "tiny-random"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "MODEL LOADED" not in out.stdout
    assert "needs matplotlib" in out.stderr and "pip install 'dift-fast[viz]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_info_reports_a_missing_backend_instead_of_refusing(monkeypatch):
    from dift_fast.cli import build_parser
    from dift_fast.cli.common import check_needs

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    parser = build_parser()
    check_needs(parser.parse_args(["info", "--backend", "onnxruntime", "--model", "tiny-random"]))  # no error
    with pytest.raises(MissingExtraError, match=r"--backend onnxruntime needs onnxruntime"):
        check_needs(parser.parse_args(["match", "a", "b", "--points", "1,1", "--backend", "onnxruntime"]))
