"""``dift-fast match``: --json output, and the picture names its images and is watermarked for random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast.cli import main

TINY = ["--ensemble-size", "1", "--image-size", "64x48", "--device", "cpu"]


@pytest.fixture
def two_images(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for name, (w, h) in (("a.png", (70, 50)), ("b.png", (40, 60))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths


def test_match_json_is_the_transfer_of_each_point(tiny_model_dir, two_images, capsys):
    from dift_fast import DiftConfig, DiftExtractor
    from dift_fast.matching import match_points

    a, b = two_images
    assert main(["match", a, b, "--points", "3,4", "69,49", "--json", "--model", str(tiny_model_dir), *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["image_a"], out["image_b"], out["size_a"], out["size_b"]) == (a, b, [70, 50], [40, 60])
    assert out["tiny_random"] is True and out["config"]["image_size"] == [64, 48]
    config = DiftConfig.from_dict(out["config"])
    fa, fb = DiftExtractor.from_pretrained(config=config).extract([a, b])
    want, cos = match_points(fa, fb, torch.tensor([[3, 4], [69, 49]]), (70, 50), (40, 60))
    assert [m["a"] for m in out["matches"]] == [[3, 4], [69, 49]]
    assert [m["b"] for m in out["matches"]] == want.tolist()
    assert [m["cosine"] for m in out["matches"]] == pytest.approx(cos.tolist(), abs=1e-6)


def test_match_picture_names_the_images_and_is_watermarked(tiny_model_dir, two_images, tmp_path, monkeypatch,
                                                           capsys):
    pytest.importorskip("matplotlib", reason="pictures need matplotlib (pip install 'dift-fast[viz]')")
    from dift_fast import viz

    seen = {}
    real = viz.plot_matches
    monkeypatch.setattr(viz, "plot_matches", lambda *a, **k: seen.update(k) or real(*a, **k))
    a, b = two_images
    out = tmp_path / "m.png"
    assert main(["match", a, b, "--points", "3,4", "--out", str(out), "--heatmap", "--model", str(tiny_model_dir),
                 *TINY]) == 0
    assert seen["names"] == (a, b) and seen["watermark"] is True and seen["heatmap"].shape == (60, 40)
    assert out.is_file()
