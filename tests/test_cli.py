"""The dift-fast command line on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dift_fast.cli import main
from dift_fast.io import load_features

SD21_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "sd21"
TINY_ARGS = ["--ensemble-size", "2", "--image-size", "64x48", "--device", "cpu"]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate([(70, 50), (40, 60), (64, 48)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_extract_writes_features_and_reports_bad_images(tiny_model_dir, images, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "feats.safetensors"
    code = main(
        [
            "extract",
            *images[:2],
            str(bad),
            images[2],
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--no-progress",
            *TINY_ARGS,
        ]
    )
    assert code == 1  # something failed...
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "1 of 4 images failed" in err
    saved = load_features(out)  # ...but the good images were written
    assert saved.names == [images[0], images[1], images[2]]
    assert saved.original_sizes == [(70, 50), (40, 60), (64, 48)]
    assert saved.features.shape[0] == 3 and saved.config.ensemble_size == 2
    assert saved.extra["failed"] == [str(bad)]


def test_extract_all_good_exits_zero(tiny_model_dir, images, tmp_path):
    out = tmp_path / "f.safetensors"
    assert (
        main(["extract", images[0], "--out", str(out), "--model", str(tiny_model_dir), "--no-progress", *TINY_ARGS])
        == 0
    )
    assert out.is_file()


def test_match_prints_points(tiny_model_dir, images, capsys):
    code = main(["match", images[0], images[1], "--points", "3,4", "69,49", "--model", str(tiny_model_dir), *TINY_ARGS])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].split()[0] == "3,4"
    for line in lines[1:]:
        x, y = map(int, line.split()[1].split(","))
        assert 0 <= x < 40 and 0 <= y < 60  # inside image B


def test_match_draws_a_picture(tiny_model_dir, images, tmp_path):
    out = tmp_path / "m.png"
    args = ["match", images[0], images[1], "--points", "3,4", "--out", str(out), "--heatmap"]
    assert main([*args, "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > png.height  # two images side by side


def test_match_rejects_points_outside_image_before_loading(images, capsys):
    code = main(["match", images[0], images[1], "--points", "70,10", "--model", "/nonexistent/model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "outside the 70x50 image" in err and "/nonexistent" not in err


def test_extract_refuses_an_output_it_would_misread(images, capsys):
    assert main(["extract", images[0], "--out", "feats.pt", "--model", "/nonexistent"]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_unknown_preset_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "a.png", "--out", "x.safetensors", "--preset", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


@pytest.mark.skipif(not SD21_CONFIGS.is_dir(), reason="needs ../shared/sd21 (the SD 2.1 configs beside the checkout)")
def test_info_reports_the_spec_costs_for_sd21(capsys):
    assert main(["info", "--model", str(SD21_CONFIGS), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["model"]
    assert abs(info["truncated_unet_parameters"] / 774e6 - 1) < 0.005
    assert abs(info["vae_flops_per_image"] / 2.61e12 - 1) < 0.005
    assert abs(info["unet_flops_per_member"] / 1.13e12 - 1) < 0.005


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "dift_fast.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("extract", "match", "info"):
        assert command in out.stdout


def test_import_loads_no_extension_and_no_heavy_modules():
    code = "import sys, dift_fast; print(sorted(m for m in sys.modules if m in {'dift_fast._C', 'diffusers', 'transformers', 'faiss', 'onnxruntime'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_builtin_tiny_random_model_works_offline_and_says_so(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["match", images[0], images[1], "--points", "5,5", "--model", "tiny-random", *TINY_ARGS])
    assert code == 0
    assert "meaningless" in capsys.readouterr().err
    assert (tmp_path / "cache" / "tiny-random-v1" / "unet" / "config.json").is_file()
