"""``python -m dift_fast``, ``--image-size native`` and the davis presets' size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dift_fast.backbones.catalog import PRESETS
from dift_fast.cli import main
from dift_fast.eval.datasets.davis import frame_size_rule
from dift_fast.io import load_features


def test_python_m_dift_fast_is_the_command_line():
    out = subprocess.run([sys.executable, "-m", "dift_fast", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: dift-fast") and "match-pairs" in out.stdout
    out = subprocess.run([sys.executable, "-m", "dift_fast", "extract"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "the following arguments are required" in out.stderr


def test_image_size_native_keeps_each_image_floored_to_multiples_of_8(tiny_model_dir, tmp_path):
    path = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (53, 75, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "f.safetensors"
    argv = ["extract", str(path), "--out", str(out), "--model", str(tiny_model_dir), "--image-size", "native",
            "--ensemble-size", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    ff = load_features(out)
    assert ff.config.image_size is None and ff.original_sizes == [(75, 53)]
    from dift_fast import DiftConfig
    from dift_fast.extractor import DiftExtractor

    config = DiftConfig.from_preset("spair", model=str(tiny_model_dir), image_size=(72, 48))  # 75x53 floored to /8
    expected = DiftExtractor.from_pretrained(config=config.replace(ensemble_size=1, device="cpu")).feature_shape()
    assert tuple(ff.features.shape[1:]) == expected
    assert ff.identity["image_size"] is None  # native features are not mixed with fixed-size ones


def test_image_size_native_is_refused_for_adm_with_the_reason(capsys):
    argv = ["extract", "x.png", "--out", "f.safetensors", "--model", "tiny-random-adm", "--image-size", "native"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--image-size native" in err and "multiples of 32" in err


def test_image_size_must_be_wxh_or_native(capsys):
    assert main(["extract", "x.png", "--out", "f.safetensors", "--model", "tiny-random", "--image-size", "big"]) == 2
    assert "expected WIDTHxHEIGHT, e.g. 768x768 (or native)" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["davis", "adm-davis"])
def test_davis_presets_are_davis_frames_under_the_papers_size_rule(preset):
    """854x480 frames: short side 480, long side floored to a multiple of 32 (spec §5) -> 832x480."""
    assert PRESETS[preset]["image_size"] == frame_size_rule(854, 480) == (832, 480)
    assert frame_size_rule(480, 854) == (480, 832)  # what `eval davis` does for a portrait video


def test_match_with_native_sizes_extracts_each_size(tiny_model_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    paths = []
    for name, (w, h) in (("a.png", (75, 53)), ("b.png", (40, 64))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    argv = ["match", *paths, "--points", "74,52", "--json", "--image-size", "native", "--model", str(tiny_model_dir),
            "--ensemble-size", "1", "--device", "cpu"]
    assert main(argv) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["size_a"] == [75, 53] and out["size_b"] == [40, 64] and out["config"]["image_size"] is None
    x, y = out["matches"][0]["b"]
    assert 0 <= x < 40 and 0 <= y < 64
