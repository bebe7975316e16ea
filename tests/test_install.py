"""Installing dift-fast: what the build records, installs without a compiler or optional packages, the checker."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dift_fast import _native, ops

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
# Optional packages a machine may lack (the GPU test image lacks diffusers); the tests must still collect.
OPTIONAL_IMPORTS = [
    "diffusers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "faiss",
    "matplotlib",
    "cv2",
    "skimage",
    "h5py",
    "ray",
    "tensorrt",
    "pycolmap",
]
# Drops scikit-build-core's editable-install finder, so a subprocess imports dift_fast from the path given.
WITHOUT_EDITABLE = (
    "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith('_editable')]\n"
)


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, **kwargs)


# ------------------------------------------------------------------------------------------------- build record
def test_build_record_matches_the_extension():
    record = _native.build_record()
    C = pytest.importorskip("dift_fast._C", reason=f"dift_fast._C is not built: {record['reason']}")
    info = C.build_info()
    assert record["variant"] == info["variant"] == ("cuda" if C.with_cuda else "cpu")
    assert record["reason"] == info["cuda_build_reason"] == C.cuda_build_reason
    assert record["cuda_requested"] in ("AUTO", "ON", "OFF")
    status = ops.kernel_status()
    assert (status["variant"], status["reason"]) == (record["variant"], record["reason"])


def test_cpu_only_build_says_why_it_has_no_cuda_kernels():
    C = pytest.importorskip("dift_fast._C", reason="dift_fast._C is not built")
    if C.with_cuda:
        pytest.skip("this build has CUDA kernels")
    reason = _native.build_record()["reason"]
    assert reason.startswith("CPU kernels only: ")
    if _native.build_record()["cuda_requested"] == "AUTO":  # the silent case of issue 10: it must say how to fix it
        assert "no working CUDA compiler" in reason and "DIFT_FAST_CUDA=ON" in reason
    else:
        assert "DIFT_FAST_CUDA=OFF" in reason


def test_cuda_kernel_tests_skip_with_the_reason_on_a_build_without_cuda_kernels(monkeypatch):
    """With a GPU but a CPU-only extension, test_kernels' CUDA tests skip naming the build, instead of failing."""
    C = pytest.importorskip("dift_fast._C", reason="dift_fast._C is not built")
    if C.with_cuda:
        pytest.skip("this build has CUDA kernels")
    from test_kernels import cuda_kernels_skip_reason  # tests/ is on sys.path

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_native, "_cuda_reasons", {})
    reason = cuda_kernels_skip_reason()
    assert reason is not None and "has no CUDA kernels" in reason and C.cuda_build_reason in reason


def test_cuda_fallback_to_the_twins_warns_once_with_the_reason(monkeypatch, caplog):
    reason = _native.cuda_unusable_reason(0)
    if reason is None:  # a machine whose kernels run on cuda:0: simulate one where they cannot
        reason = "simulated: built without CUDA kernels"
        monkeypatch.setattr(_native, "_cuda_reasons", {0: reason})
    monkeypatch.setattr(ops, "_warned_cuda_fallback", set())
    with caplog.at_level(logging.WARNING, logger="dift_fast.ops"):
        assert ops._native_for(torch.device("cuda", 0), None) is None  # the twin
        assert ops._native_for(torch.device("cuda", 0), None) is None
        assert ops._native_for(torch.device("cuda", 0), False) is None  # asked for the twin: nothing to say
    warnings = [r.getMessage() for r in caplog.records if r.name == "dift_fast.ops"]
    assert len(warnings) == 1 and "cuda:0" in warnings[0] and reason in warnings[0]
    with pytest.raises(_native.NativeUnavailableError, match=re.escape(reason)):
        ops._native_for(torch.device("cuda", 0), True)


def test_ensemble_reduce_returns_a_tensor_and_the_normalized_variant_a_pair():
    feats = torch.randn(6, 5, 3, 4)
    mean = ops.ensemble_reduce(feats, 3)
    assert isinstance(mean, torch.Tensor) and mean.shape == (2, 5, 3, 4)
    pair = ops.ensemble_reduce_normalized(feats, 3)
    assert isinstance(pair, tuple) and len(pair) == 2
    torch.testing.assert_close(pair[0], mean, rtol=0, atol=0)
    assert pair[1].shape == (2, 3, 4, 5)
    torch.testing.assert_close(pair[1].norm(dim=-1), torch.ones(2, 3, 4), rtol=1e-6, atol=0)
    assert not hasattr(_native, "available")  # the dead helper is gone; unavailable_reason() is the one test


# ------------------------------------------------------------------------------------------------- no compiler
def test_installs_without_a_cxx_compiler_and_gives_the_same_features(tmp_path, tiny_extractor_factory, tiny_model_dir):
    """With no C++ compiler the wheel still builds; the install has no kernels, says why, and the pure-torch twins
    give features bit-identical to the native kernels' (issue 16 §3)."""
    missing = str(tmp_path / "no-such-compiler")
    env = {**os.environ, "CC": missing, "CXX": missing, "CUDACXX": missing, "DIFT_FAST_CUDA": "AUTO"}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q", "-w",
         str(wheels), "-C", f"build-dir={tmp_path / 'build'}", str(ROOT)],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    (wheel,) = wheels.glob("dift_fast-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    assert not list((site / "dift_fast").glob("_C.*")), "an extension was built without a compiler"

    image = torch.linspace(-1, 1, 3 * 48 * 64).reshape(1, 3, 48, 64)
    torch.save(image, tmp_path / "image.pt")
    code = WITHOUT_EDITABLE + (
        f"sys.path.insert(0, {str(site)!r})\n"
        "import json, torch, dift_fast\n"
        "from dift_fast import DiftExtractor, _native, ops\n"
        f"assert dift_fast.__file__.startswith({str(site)!r}), dift_fast.__file__\n"
        f"image = torch.load({str(tmp_path / 'image.pt')!r}, weights_only=True)\n"
        f"ex = DiftExtractor.from_pretrained({str(tiny_model_dir)!r}, ensemble_size=2, image_size=(64, 48),"
        " device='cpu')\n"
        f"torch.save(ex.extract(image), {str(tmp_path / 'feats.pt')!r})\n"
        "print(json.dumps({'record': _native.build_record(), 'status': ops.kernel_status()}))\n"
    )
    out = run_python(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["record"]["variant"] == "none" and "no C++ compiler" in report["record"]["reason"]
    cpu = report["status"]["cpu"]
    assert not cpu["usable"] and "not built" in cpu["reason"] and "no C++ compiler" in cpu["reason"]

    twin_features = torch.load(tmp_path / "feats.pt", weights_only=True)
    native_features = tiny_extractor_factory().extract(image)
    assert torch.equal(twin_features, native_features)


# ------------------------------------------------------------------------------------------------- collection
def test_every_test_module_collects_without_optional_packages():
    """`pytest --collect-only` with diffusers and every optional package hidden: modules skip, none errors."""
    code = (
        "import sys\n"
        f"for name in {OPTIONAL_IMPORTS!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, importlib.util.find_spec returns None\n"
        "import pytest\n"
        "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests']))\n"
    )
    out = run_python(code, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "error" not in text.lower().split("short test summary info")[-1], text[-4000:]
    assert "tests/test_parity.py" in text and "diffusers" in text  # skipped, saying why


def test_tiny_model_tests_skip_with_the_reason_without_diffusers():
    """The tiny-model fixture skips (saying why) rather than erroring when diffusers is missing."""
    code = (
        "import sys\nsys.modules['diffusers'] = None\nimport pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-rs', "
        "'tests/test_engine.py::test_engine_noise_is_the_contract', 'tests/test_gpu_extractor.py']))\n"
    )
    out = run_python(code, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert " passed" not in text and "failed" not in text and "error" not in text.lower(), text[-4000:]
    assert "the tiny model needs diffusers" in text, text[-4000:]


# ------------------------------------------------------------------------------------------------- checker, extras
def run_checker(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_install.py"), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_checker_passes_in_the_test_environment_and_predicts_the_kernels():
    out = run_checker("--json")
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"], out.stdout
    names = {i["name"] for i in result["items"]}
    assert {"torch>=2.4", "scikit-build-core>=0.10", "nanobind>=2.0", "C++ compiler"} <= names
    assert result["kernels_variant"] in ("cpu", "cuda")


def test_checker_names_each_missing_requirement_and_the_fix(tmp_path):
    meta = PYPROJECT.read_text()
    fake = tmp_path / "pyproject.toml"
    fake.write_text(meta.replace('"tqdm",', '"tqdm",\n  "dift-fast-no-such-package>=1.0",', 1))
    out = run_checker("--pyproject", str(fake))
    assert out.returncode == 1
    assert "MISSING  dift-fast-no-such-package>=1.0" in out.stdout
    assert 'pip install "dift-fast-no-such-package>=1.0"' in out.stdout
    assert "NOT READY: missing dift-fast-no-such-package>=1.0" in out.stdout


def test_checker_says_no_compiler_means_no_kernels_but_still_installs(tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "DIFT_FAST_CUDA": "AUTO"}
    result = json.loads(run_checker("--json", env=env).stdout)
    assert result["ok"] and result["kernels_variant"] == "none"
    (cxx,) = [i for i in result["items"] if i["name"] == "C++ compiler"]
    assert not cxx["ok"] and not cxx["required"] and "identical features" in cxx["fix"]
    env["DIFT_FAST_CUDA"] = "ON"  # asked for CUDA kernels: now the compiler is required
    out = run_checker("--json", env=env)
    assert out.returncode == 1 and "C++ compiler" in json.loads(out.stdout)["missing"]


def test_all_extra_holds_every_feature_extra():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_install", ROOT / "scripts" / "check_install.py")
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    optional = checker.tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    features = [e for e in optional if e not in ("all", "dev")]
    assert "all" in optional and features
    assert sorted(checker.expand_extras(optional, ["all"])) == sorted(checker.expand_extras(optional, features))


def test_info_says_which_build_is_in_use_and_what_runs_where():
    from dift_fast.cli.info import kernel_lines

    status = ops.kernel_status()
    lines = kernel_lines(status, "cuda:0")
    assert lines[0].startswith(f"kernels      build '{status['variant']}': ") and status["reason"] in lines[0]
    cpu_line, cuda_line = lines[1], lines[2]
    assert "on cpu: native kernels" in cpu_line if status["cpu"]["usable"] else "pure-torch twins" in cpu_line
    if not status["cuda"]["usable"]:
        assert "on cuda:0: pure-torch twins" in cuda_line and status["cuda"]["reason"] in cuda_line
    assert len(kernel_lines(status, "cpu")) == 2  # no device line when the device is the CPU
