"""Every backbone through every path: ONNX export and onnxruntime (DIFT_adm's network without an encoder graph,
CleanDIFT's UNet), the feature store, `dift-fast info`, and a new backbone added with one class and one card."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from store_helpers import make_images

from dift_fast import DiftConfig, DiftExtractor
from dift_fast.cli import main
from dift_fast.loading import load_components
from dift_fast.tiny import tiny_cleandift_weights

ADM_SIZE = (64, 96)
ADM_ARGS = [
    "--model",
    "tiny-random-adm",
    "--preset",
    "adm-spair",
    "--ensemble-size",
    "2",
    "--device",
    "cpu",
    "--no-progress",
]
# fp32 graphs: onnxruntime and torch differ only in the order of float32 sums; ~1e-6 observed (as for SD).
FP32_TOL = 1e-4


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def adm_config(**changes) -> DiftConfig:
    return DiftConfig.from_preset(
        "adm-spair",
        **{"model": "tiny-random-adm", "image_size": ADM_SIZE, "ensemble_size": 2, "device": "cpu", **changes},
    )


@pytest.fixture(scope="module")
def adm_components():
    return load_components(adm_config())


# ---------------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def adm_export(adm_components, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
    from dift_fast.export.graphs import export_onnx

    return export_onnx(adm_components, tmp_path_factory.mktemp("adm"), image_size=ADM_SIZE, config=adm_config())


def test_adm_export_has_no_encoder_graph_and_matches_torch(adm_export, adm_components):
    from dift_fast.export.manifest import load_manifest
    from dift_fast.export.ort_backend import OrtBackend

    folder, manifest = adm_export
    assert sorted(manifest["files"]) == ["unet.onnx"] and manifest["backbone"] == "adm"
    assert load_manifest(folder, verify_hashes=True) == manifest
    inputs = {i["name"]: i["shape"] for i in manifest["graphs"]["unet"]["inputs"]}
    assert inputs == {"x_t": ["batch", 3, 96, 64], "timestep": [1]}  # pixels, no text
    assert manifest["graphs"]["unet"]["outputs"][0]["shape"] == ["batch", 64, 6, 4]  # block 4: stride 16
    backend = OrtBackend(folder, torch.device("cpu"))
    assert backend.vae is None and backend.geometry.size_multiple == 32
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = adm_components.network(x, torch.tensor([101]))
    assert rel_l2(backend.features(x, 101, None), ref) < FP32_TOL
    with pytest.raises(RuntimeError, match="no encoder graph"):
        backend.encode(torch.zeros(1, 3, 96, 64))


def test_adm_extractor_on_onnxruntime_matches_torch(adm_export, adm_components):
    from dift_fast.backend_options import OrtOptions

    images = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = DiftExtractor(adm_components, adm_config()).extract(images)
    ort = DiftExtractor(adm_components, adm_config(backend="onnxruntime"), OrtOptions(export_dir=adm_export[0]))
    assert rel_l2(ort.extract(images), ref) < FP32_TOL


def test_adm_dynamic_export_runs_other_sizes(adm_components, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
    from dift_fast.export.graphs import export_onnx
    from dift_fast.export.ort_backend import OrtBackend

    folder, _ = export_onnx(adm_components, tmp_path / "dyn", dynamic_size=True, image_size=None)
    backend = OrtBackend(folder, torch.device("cpu"))
    for h, w in [(64, 64), (96, 128)]:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            ref = adm_components.network(x, torch.tensor([41]))
        out = backend.features(x, 41, None)
        assert out.shape == ref.shape and rel_l2(out, ref) < FP32_TOL


def test_cli_export_adm_then_extract_with_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
    from dift_fast.io import load_features

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(paths[-1])
    export = tmp_path / "export"
    assert (
        main(
            [
                "export",
                "--preset",
                "adm-spair",
                "--model",
                "tiny-random-adm",
                "--out",
                str(export),
                "--image-size",
                "64x96",
            ]
        )
        == 0
    )
    assert json.loads((export / "manifest.json").read_text())["config"]["backbone"] == "adm"
    common = [*ADM_ARGS, "--image-size", "64x96"]
    assert main(["extract", *paths, "--out", str(tmp_path / "t.safetensors"), *common]) == 0
    assert (
        main(
            [
                "extract",
                *paths,
                "--out",
                str(tmp_path / "o.safetensors"),
                "--backend",
                "onnxruntime",
                "--export-dir",
                str(export),
                *common,
            ]
        )
        == 0
    )
    ref, out = load_features(tmp_path / "t.safetensors"), load_features(tmp_path / "o.safetensors")
    assert ref.config.backbone == "adm" and rel_l2(out.features, ref.features) < FP32_TOL


def test_an_export_of_another_backbone_is_refused(adm_export, tiny_model_dir):
    from dift_fast.backend_options import OrtOptions

    config = DiftConfig.from_preset(
        "spair", model=str(tiny_model_dir), image_size=(64, 48), ensemble_size=1, device="cpu", backend="onnxruntime"
    )
    with pytest.raises(ValueError, match=r"backbone 'adm', the extractor runs 'sd'"):
        DiftExtractor.from_pretrained(config=config, backend_options=OrtOptions(export_dir=adm_export[0]))


def test_cleandift_unet_exports_and_matches_torch(tiny_model_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
    from dift_fast.export.graphs import export_onnx

    from dift_fast.backend_options import OrtOptions

    config = DiftConfig.from_preset(
        "cleandift",
        model=str(tiny_model_dir),
        unet_weights=str(tiny_cleandift_weights()),
        image_size=(64, 48),
        device="cpu",
    )
    comps = load_components(config)
    folder, manifest = export_onnx(comps, tmp_path / "clean", image_size=(64, 48), config=config)
    assert sorted(manifest["files"]) == ["unet.onnx", "vae_encoder.onnx"] and manifest["backbone"] == "cleandift"
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = DiftExtractor(comps, config).extract(images)
    ort = DiftExtractor(comps, config.replace(backend="onnxruntime"), OrtOptions(export_dir=folder))
    assert rel_l2(ort.extract(images), ref) < FP32_TOL
    # the SD UNet's export is another model: its weights hash differs from CleanDIFT's
    sd = load_components(str(tiny_model_dir), None, 1)
    _, sd_manifest = export_onnx(sd, tmp_path / "sd", image_size=(64, 48))
    assert sd_manifest["model"]["weights_sha256"] != manifest["model"]["weights_sha256"]


# ----------------------------------------------------------------------------------------------------- store


def test_store_on_tiny_adm_and_its_identity(tmp_path, capsys):
    from dift_fast.store import FeatureStore

    images = make_images(tmp_path / "imgs", 3, bad=False)
    store = tmp_path / "store"
    args = ["extract", str(images), "--out", str(store), "--image-size", "64x64", *ADM_ARGS]
    assert main(args) == 0
    opened = FeatureStore.open(store)
    assert len(opened) == 3 and opened.meta["identity"]["backbone"] == "adm"
    name = opened.names()[0]
    ext = DiftExtractor.from_pretrained("tiny-random-adm", image_size=(64, 64), ensemble_size=2, device="cpu")
    expected = ext.extract(str(images / name))[0]
    stored = opened.get(name)
    assert stored.shape == (64, 4, 4)  # block 4 of a 64x64 image: stride 16
    torch.testing.assert_close(stored.float(), expected.half().float(), rtol=0, atol=0)  # stored in fp16
    assert main(args) == 0  # resumes: the same identity
    # An SD run into the ADM store is refused (another identity), and the store is left as it was.
    code = main(
        [
            "extract",
            str(images),
            "--out",
            str(store),
            "--model",
            "tiny-random",
            "--image-size",
            "64x64",
            "--ensemble-size",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 2 and "backbone: store has 'adm', this run 'sd'" in capsys.readouterr().err
    assert FeatureStore.open(store).meta["identity"]["backbone"] == "adm"


# ------------------------------------------------------------------------------------------------------ info


def test_info_reports_dift_adm_costs_without_weights(capsys):
    assert main(["info", "--model", "adm", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model, config = info["model"], info["config"]
    assert (model["backbone"], config["preset"], config["up_ft_index"]) == ("adm", "adm-spair", 4)
    assert model["network_total_parameters"] == 552_814_086  # spec §6
    assert round(model["truncated_unet_parameters"] / 1e6, 1) == 415.5  # issue 15: up to block 4
    assert round(model["unet_flops_per_member"] / 1e12, 1) == 2.6  # per 512² image per member to block 4
    assert model["vae_encoder_parameters"] is None and model["vae_flops_per_image"] == 0
    assert model["flops_per_image"] == 8 * model["unet_flops_per_member"]
    assert model["feature_block"] == {"index": 4, "channels": 1024, "stride": 16}
    assert main(["info", "--model", "adm"]) == 0
    text = capsys.readouterr().out
    assert "415.5 M (of 552.8 M), encoder none (pixel space)" in text


def test_info_reports_cleandift_with_one_unet_pass(tiny_model_dir, capsys):
    assert main(["info", "--model", str(tiny_model_dir), "--preset", "cleandift", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["backbone"] == "cleandift"
    assert model["flops_per_image"] == model["vae_flops_per_image"] + model["unet_flops_per_member"]  # E = 1


# ------------------------------------------------------------------------------------------- adding a backbone


def test_a_new_backbone_is_one_class_and_one_card(tiny_model_dir, monkeypatch, tmp_path):
    """docs/backbones.md: a backbone is a Backbone subclass, its card (with presets) in the catalog and a line in
    the registry; config, extractor, store and export then take it without any other change."""
    from dift_fast.backbones import catalog, registry
    from dift_fast.backbones.sd import SdBackbone
    from dift_fast.store import FeatureStore

    class Sd15Backbone(SdBackbone):  # e.g. SD 1.5: SD's code, its own name and presets
        name = "sd15"

    card = dataclasses.replace(
        catalog.CARDS["sd"],
        name="sd15",
        title="Stable Diffusion 1.5",
        default_preset="sd15-spair",
        presets={
            "sd15-spair": {
                "image_size": (64, 48),
                "t": 261,
                "up_ft_index": 1,
                "ensemble_size": 2,
                "model": str(tiny_model_dir),
            }
        },
        benchmark_presets=dict.fromkeys(catalog.CARDS["sd"].benchmark_presets, "sd15-spair"),
    )
    monkeypatch.setitem(catalog.CARDS, "sd15", card)
    monkeypatch.setitem(registry.IMPLEMENTATIONS, "sd15", Sd15Backbone)

    config = DiftConfig.from_preset("sd15-spair", device="cpu")
    assert (config.backbone, config.model) == ("sd15", str(tiny_model_dir))
    with pytest.raises(ValueError, match="0, 1, 2, 3"):
        config.replace(up_ft_index=4)
    ext = DiftExtractor.from_pretrained(preset="sd15-spair", device="cpu")
    sd = DiftExtractor.from_pretrained(str(tiny_model_dir), image_size=(64, 48), ensemble_size=2, device="cpu")
    images = make_images(tmp_path / "imgs", 2, bad=False)
    assert torch.equal(
        ext.extract(str(images / "b" / "deep" / "img00.jpg")), sd.extract(str(images / "b" / "deep" / "img00.jpg"))
    )  # the same model under another name
    assert ext.model_identity()["backbone"] == "sd15"
    store = tmp_path / "store"
    assert (
        main(
            ["extract", str(images), "--out", str(store), "--preset", "sd15-spair", "--device", "cpu", "--no-progress"]
        )
        == 0
    )
    assert FeatureStore.open(store).meta["identity"]["backbone"] == "sd15"
