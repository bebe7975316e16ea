"""Every benchmark runs on every backbone: the tiny DIFT_adm and CleanDIFT models through the CLI on the fixture
datasets, with each benchmark's protocol preset for the backbone and adm-davis's propagation settings."""

from __future__ import annotations

import json

import pytest
from test_eval_jhmdb import jhmdb_root  # noqa: F401 (a fixture)

from dift_fast.cli import main
from dift_fast.eval.propagation import PropagationParams

ADM = ["--model", "tiny-random-adm", "--ensemble-size", "1", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _report(out, bench):
    return json.loads((out / f"{bench}.json").read_text())


def test_propagation_settings_follow_the_preset():
    assert (PropagationParams.for_preset("adm-davis").temperature, PropagationParams.for_preset("adm-davis").topk) == (
        0.1,
        10,
    )
    assert PropagationParams.for_preset("davis") == PropagationParams() == PropagationParams.for_preset(None)
    assert (PropagationParams().temperature, PropagationParams().topk) == (0.2, 15)


@pytest.mark.parametrize(("bench", "preset"), [("spair", "adm-spair"), ("hpatches", "adm-hpatches")])
def test_image_benchmarks_on_tiny_adm_use_its_protocol(bench, preset, spair_root, hpatches_root, tmp_path, capsys):
    root = {"spair": spair_root, "hpatches": hpatches_root[0]}[bench]
    extra = ["--keypoints", str(hpatches_root[1])] if bench == "hpatches" else []
    out = tmp_path / "out"
    assert main(["eval", bench, "--root", str(root), "--image-size", "64x64", "--out", str(out), *extra, *ADM]) == 0
    data = _report(out, bench)
    config = data["config"]
    assert (config["backbone"], config["preset"]) == ("adm", preset)
    assert data["reported"] == {} and "DIFT_sd's" in data["reported_source"]  # no DIFT_sd numbers beside ADM's
    assert any("random weights" in n for n in data["notes"])
    # only the settings changed on the command line differ from the ADM protocol
    diffs = next(n for n in data["notes"] if "differ" in n)
    assert "image_size" in diffs and "ensemble_size" in diffs and "up_ft_index" not in diffs and " t=" not in diffs


def test_video_benchmarks_on_tiny_adm_use_adm_davis(davis_root, jhmdb_root, tmp_path):  # noqa: F811
    for bench, root in (("davis", davis_root), ("jhmdb", jhmdb_root)):
        out = tmp_path / bench
        # short side 64: the frames must be multiples of 32 for ADM
        assert (
            main(["eval", bench, "--root", str(root), "--short-side", "64", "--limit", "1", "--out", str(out), *ADM])
            == 0
        )
        data = _report(out, bench)
        assert (data["config"]["backbone"], data["config"]["preset"], data["config"]["up_ft_index"]) == (
            "adm",
            "adm-davis",
            7,
        )
        params = data["details"]["propagation"]["params"]
        assert (params["temperature"], params["topk"]) == (0.1, 10)  # DIFT's DAVIS settings for ADM


def test_cleandift_preset_runs_a_benchmark(tiny_model_dir, spair_root, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "spair",
                "--root",
                str(spair_root),
                "--model",
                "tiny-random",
                "--preset",
                "cleandift",
                "--image-size",
                "64x48",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = _report(out, "spair")
    assert (data["config"]["backbone"], data["config"]["ensemble_size"], data["config"]["t"]) == ("cleandift", 1, 261)
    assert data["reported"] == {}


def test_synthetic_homography_on_tiny_adm(tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "synthetic-homography", "--image-size", "64x64", "--limit", "2", "--out", str(out), *ADM]) == 0
    assert _report(out, "synthetic-homography")["config"]["preset"] == "adm-hpatches"
