"""ONNX export and the onnxruntime backend on the tiny model: graphs, manifest, cache, parity with torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra (onnx, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")

from dift_fast.export.graphs import export_onnx  # noqa: E402
from dift_fast.export.manifest import ManifestError, load_manifest, validate_manifest  # noqa: E402
from dift_fast.export.ort_backend import OrtBackend, create  # noqa: E402

from dift_fast import DiftConfig, DiftExtractor  # noqa: E402
from dift_fast.loading import load_components  # noqa: E402

SIZE = (64, 48)  # (W, H): latent 8x6, not a multiple of the tiny UNet's 8x upsampling, so the resize path runs
# fp32 graphs: onnxruntime and torch differ only in the order of float32 sums (conv, matmul, norm reductions);
# observed ~1e-6 relative L2 on the tiny model, the bound is 1e-4.
FP32_TOL = 1e-4
# fp16 graphs: weights and activations rounded to fp16 (unit roundoff 4.9e-4) at every layer, GroupNorm in fp32,
# softmax in the graph dtype (export/attention.py); observed ~1e-3 against torch fp32. 1e-2 leaves room for the accumulation over ~20 layers.
FP16_TOL = 1e-2


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def comps(tiny_model_dir):
    return load_components(str(tiny_model_dir), None, 1)


@pytest.fixture(scope="module")
def fp32_export(comps, tmp_path_factory):
    config = DiftConfig.from_preset("spair", model=str(comps.folder), image_size=SIZE, ensemble_size=2)
    return export_onnx(comps, tmp_path_factory.mktemp("fp32"), dtype="fp32", image_size=SIZE, config=config)


@pytest.fixture(scope="module")
def fp16_dynamic_export(comps, tmp_path_factory):
    return export_onnx(comps, tmp_path_factory.mktemp("fp16"), dtype="fp16", image_size=SIZE, dynamic_size=True)


def make_extractor(comps, backend="torch", **options):
    config = DiftConfig.from_preset("spair", model=str(comps.folder), ensemble_size=2, image_size=SIZE, device="cpu",
                                    backend=backend)
    return DiftExtractor(comps, config, **options)


def test_export_writes_checked_graphs_and_manifest(fp32_export, comps):
    folder, manifest = fp32_export
    assert sorted(manifest["files"]) == ["unet.onnx", "vae_encoder.onnx"]
    for name in manifest["files"]:
        onnx.checker.check_model(str(folder / name))
    assert load_manifest(folder, verify_hashes=True) == manifest
    assert manifest["up_ft_index"] == 1 and manifest["dtype"] == "fp32" and manifest["opset"] == 20
    assert manifest["config"]["image_size"] == list(SIZE)
    assert manifest["model"]["id"] == str(comps.folder)
    assert {"torch", "onnx", "diffusers", "dift_fast"} <= set(manifest["tool_versions"])
    unet_in = {i["name"]: i["shape"] for i in manifest["graphs"]["unet"]["inputs"]}
    assert unet_in == {"x_t": ["batch", 4, 6, 8], "timestep": [1], "encoder_hidden_states": ["batch", 77, 32]}
    model = onnx.load(str(folder / "unet.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [4, 6, 8]


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_graphs_match_torch_fp32(fp32_export, comps, batch):
    folder, _ = fp32_export
    backend = OrtBackend(folder, torch.device("cpu"))
    g = torch.Generator().manual_seed(batch)
    x, ctx = torch.randn(batch, 4, 6, 8, generator=g), torch.randn(batch, 77, 32, generator=g)
    images = torch.rand(batch, 3, 48, 64, generator=g) * 2 - 1
    with torch.inference_mode():
        ref = comps.unet(x, torch.tensor([261]), ctx)
        ref_mean, ref_std = comps.vae(images)
    assert rel_l2(backend.features(x, 261, ctx), ref) < FP32_TOL
    mean, std = backend.encode(images)
    assert rel_l2(mean, ref_mean) < FP32_TOL and rel_l2(std, ref_std) < FP32_TOL


def test_extractor_onnxruntime_matches_torch(fp32_export, comps):
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = make_extractor(comps).extract(images)
    ex = make_extractor(comps, "onnxruntime", engine_dir=str(fp32_export[0]))
    assert ex.backend.name == "onnxruntime" and ex.backend.provider == "CPUExecutionProvider"
    assert rel_l2(ex.extract(images), ref) < FP32_TOL


def test_fp16_graph_keeps_groupnorm_in_fp32(fp16_dynamic_export):
    """GroupNorm statistics stay fp32; attention is half precision in TensorRT's fusable form
    (tests/test_export_attention.py)."""
    folder, manifest = fp16_dynamic_export
    assert manifest["dtype"] == "fp16" and manifest["graphs"]["unet"]["inputs"][0]["dtype"] == "float16"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "unet.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms, "the tiny UNet has GroupNorm"
    for node in norms:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, f"{node.op_type} {node.name} runs in half precision"
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_fp16_dynamic_graph_matches_torch_at_several_sizes(fp16_dynamic_export, comps):
    folder, _ = fp16_dynamic_export
    backend = OrtBackend(folder, torch.device("cpu"))
    assert backend.dtype == torch.float16
    for h, w in [(6, 8), (10, 14), (7, 9)]:  # 7x9 is odd: every upsampler resizes to its skip's size
        x, ctx = torch.randn(2, 4, h, w), torch.randn(2, 77, 32)
        with torch.inference_mode():
            ref = comps.unet(x, torch.tensor([51]), ctx)
        out = backend.features(x, 51, ctx)
        assert out.dtype == torch.float16 and out.shape == ref.shape
        assert rel_l2(out.float(), ref) < FP16_TOL


def test_fp16_extractor_matches_torch_fp32(fp16_dynamic_export, comps):
    images = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = make_extractor(comps).extract(images)
    out = make_extractor(comps, "onnxruntime", engine_dir=str(fp16_dynamic_export[0])).extract(images)
    assert rel_l2(out, ref) < FP16_TOL


def test_bf16_export_is_valid_onnx_but_not_run_by_onnxruntime(comps, tmp_path):
    folder, manifest = export_onnx(comps, tmp_path, dtype="bf16", image_size=SIZE)
    assert manifest["opset"] == 22  # bfloat16 Conv/MatMul need opset 22
    onnx.checker.check_model(str(folder / "unet.onnx"))
    with pytest.raises(ValueError, match="bf16"):
        OrtBackend(folder, torch.device("cpu"))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(comps, tmp_path / "x", dtype="bf16", image_size=SIZE, opset=20)


def test_fixed_prompt_graph_in_the_default_cache_folder(comps, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path))
    folder, manifest = export_onnx(comps, None, image_size=SIZE, fixed_prompt="a photo of a cat")
    assert folder.parent == tmp_path / "onnx" and folder.name == manifest["export_key"][:24]
    assert export_onnx(comps, None, image_size=SIZE, fixed_prompt="a photo of a cat")[0] == folder  # cached
    assert [i["name"] for i in manifest["graphs"]["unet"]["inputs"]] == ["x_t", "timestep"]
    assert manifest["fixed_prompt"]["text"] == "a photo of a cat"
    images = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ref = make_extractor(comps).extract(images, prompt="a photo of a cat")
    ex = make_extractor(comps, "onnxruntime", engine_dir=str(folder))
    assert rel_l2(ex.extract(images, prompt="a photo of a cat"), ref) < FP32_TOL
    with pytest.raises(ValueError, match="folds the prompt"):
        ex.extract(images, prompt="a photo of a dog")


def test_export_is_cached_and_keyed(comps, fp32_export):
    folder, manifest = fp32_export
    mtime = (folder / "unet.onnx").stat().st_mtime_ns
    _, again = export_onnx(comps, folder, dtype="fp32", image_size=SIZE,
                                      config=DiftConfig.from_preset("spair", model=str(comps.folder),
                                                                    image_size=SIZE, ensemble_size=2))
    assert again == manifest and (folder / "unet.onnx").stat().st_mtime_ns == mtime  # nothing re-exported
    from dift_fast.export.graphs import export_key

    spec = {k: manifest[k] for k in ("model", "up_ft_index", "dtype", "opset", "dynamic_size", "image_size",
                                     "fixed_prompt", "attention")}
    assert export_key(spec) == manifest["export_key"]
    for change in ({"dtype": "fp16"}, {"image_size": [64, 64]}, {"up_ft_index": 2}, {"opset": 21}, {"attention": None},
                   {"model": {**spec["model"], "weights_sha256": "0" * 64}}):
        assert export_key({**spec, **change}) != manifest["export_key"], change


def test_manifest_validation_reports_problems(fp32_export, tmp_path):
    folder, manifest = fp32_export
    assert validate_manifest(manifest, folder) == []
    assert validate_manifest([]) == ["manifest is a list, not a JSON object"]
    assert "missing key 'dtype'" in validate_manifest({k: v for k, v in manifest.items() if k != "dtype"})
    assert any("format_version" in p for p in validate_manifest({**manifest, "format_version": 99}))
    bad_files = {**manifest["files"], "unet.onnx": {**manifest["files"]["unet.onnx"], "sha256": "0" * 64}}
    assert any("content_hash" in p for p in validate_manifest({**manifest, "files": bad_files}))
    # a tampered copy: same size, other bytes
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "vae_encoder.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "vae_encoder.onnx").write_bytes(bytes(data))
    assert validate_manifest(manifest, copy, verify_hashes=False) == []  # sizes only
    assert any("differs" in p for p in validate_manifest(manifest, copy))  # the sha256 of every file, by default
    with pytest.raises(ManifestError, match=r"vae_encoder\.onnx content differs"):
        load_manifest(copy)
    (copy / "unet.onnx").unlink()
    with pytest.raises(ManifestError, match=r"unet\.onnx is missing"):
        load_manifest(copy)
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        load_manifest(tmp_path)


def test_backend_refuses_another_block_or_model(comps, fp32_export, tiny_model_dir):
    folder, _ = fp32_export
    other_block = load_components(str(tiny_model_dir), None, 2)
    with pytest.raises(ValueError, match="up block 1"):
        create(other_block, torch.device("cpu"), torch.float32, engine_dir=str(folder))
    torch.manual_seed(5)
    other = load_components(str(tiny_model_dir), None, 1)
    with torch.no_grad():
        other.unet.conv_in.weight.add_(torch.randn_like(other.unet.conv_in.weight))
    with pytest.raises(ValueError, match="other weights"):
        create(other, torch.device("cpu"), torch.float32, engine_dir=str(folder))


def test_no_build_without_export_is_a_clear_error(comps, tmp_path):
    with pytest.raises(ManifestError, match="no_build"):
        create(comps, torch.device("cpu"), torch.float32, engine_dir=str(tmp_path), no_build=True)


def test_cli_export_then_extract_with_onnxruntime(tiny_model_dir, tmp_path):
    from PIL import Image

    from dift_fast.cli import main
    from dift_fast.io import load_features

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(paths[-1])
    engine = tmp_path / "engine"
    assert main(["export", "--preset", "spair", "--model", str(tiny_model_dir), "--out", str(engine),
                 "--image-size", "64x48"]) == 0
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["config"]["preset"] == "spair" and manifest["config"]["image_size"] == [64, 48]
    common = ["--model", str(tiny_model_dir), "--image-size", "64x48", "--ensemble-size", "2", "--no-progress",
              "--device", "cpu"]
    assert main(["extract", *paths, "--out", str(tmp_path / "t.safetensors"), *common]) == 0
    assert main(["extract", *paths, "--out", str(tmp_path / "o.safetensors"), "--backend", "onnxruntime",
                 "--engine", str(engine), *common]) == 0
    ref = load_features(tmp_path / "t.safetensors")
    out = load_features(tmp_path / "o.safetensors")
    assert rel_l2(out.features, ref.features) < FP32_TOL
    assert main(["extract", *paths, "--out", str(tmp_path / "x.safetensors"), "--engine", str(engine), *common]) == 2


def test_dift_fast_never_imports_export():
    code = ("import sys, dift_fast, dift_fast.cli, dift_fast.backends, dift_fast.extractor; "
            "dift_fast.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.startswith('dift_fast.export') or m in ('onnx', 'onnxruntime')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_backends_registered_through_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="dift_fast.backends")}
    assert names["onnxruntime"] == "dift_fast.export.ort_backend:create"
    assert names["tensorrt"] == "dift_fast.export.trt_backend:create"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu (CUDAExecutionProvider)")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_matches_torch(fp32_export, comps, cuda_graph):
    folder, _ = fp32_export
    backend = OrtBackend(folder, torch.device("cuda"), cuda_graph=cuda_graph)
    x, ctx = torch.randn(2, 4, 6, 8), torch.randn(2, 77, 32)
    with torch.inference_mode():
        ref = comps.unet(x, torch.tensor([261]), ctx)
    for _ in range(2):  # the second call replays the captured graph
        out = backend.features(x.cuda(), 261, ctx.cuda())
        # CUDA convolutions may use TF32 (10-bit mantissa) inside onnxruntime: looser than the CPU bound.
        assert rel_l2(out.cpu(), ref) < 1e-2
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # another current stream: ordered by stream waits, not by the host
        out = backend.features(x.cuda(), 261, ctx.cuda())
        mean, _ = backend.encode(torch.rand(2, 3, 48, 64) * 2 - 1)  # a host tensor, copied without a stream wait
    torch.cuda.synchronize()
    assert rel_l2(out.cpu(), ref) < 1e-2 and mean.shape == (2, 4, 6, 8)


def test_accelerated_backend_loads_only_what_it_runs(tiny_model_dir, fp32_export, comps, tmp_path, monkeypatch):
    """With an export checked once against the weights, later extractors load neither the UNet nor the VAE and
    hash nothing; changed weight files are noticed (checked again, and refused when they differ)."""
    import shutil

    import dift_fast.export.resolve as resolve_mod
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    from dift_fast.backend_options import OrtOptions

    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    loads, hashes = [], []
    for cls in (UNet2DConditionModel, AutoencoderKL):
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, _load=cls.from_pretrained, _name=cls.__name__, **k:
                            loads.append(_name) or _load(*a, **k))
    real_hash = resolve_mod.weights_hash
    monkeypatch.setattr(resolve_mod, "weights_hash", lambda *m: hashes.append(1) or real_hash(*m))
    kwargs = {"model": str(model), "backend": "onnxruntime", "backend_options": OrtOptions(export_dir=fp32_export[0]),
              "device": "cpu", "ensemble_size": 2, "image_size": SIZE}

    first = DiftExtractor.from_pretrained(**kwargs)  # the first use checks the export against the weights
    assert sorted(loads) == ["AutoencoderKL", "UNet2DConditionModel"] and len(hashes) == 1
    assert first.components.unet is None and first.components.vae is None  # dropped after the check
    loads.clear()
    hashes.clear()
    second = DiftExtractor.from_pretrained(**kwargs)
    assert loads == [] and hashes == [] and second.components.unet is None and second.components.vae is None
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ref = make_extractor(comps).extract(images)
    out = second.extract(images)
    assert rel_l2(out, ref) < FP32_TOL
    assert second.feature_shape() == tuple(out.shape[1:]) == make_extractor(comps).feature_shape()

    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors["conv_in.weight"] = tensors["conv_in.weight"] + 1  # a fine-tune of the same shapes and size
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="other weights"):
        DiftExtractor.from_pretrained(**kwargs)
    assert "UNet2DConditionModel" in loads and hashes  # the changed file was noticed and checked again


def test_an_export_made_for_the_backend_is_not_checked_again(tiny_model_dir, tmp_path, monkeypatch):
    """An extractor that exports into an empty --export-dir drops the torch networks afterwards, and the next one
    runs that export without loading or hashing them."""
    from diffusers import UNet2DConditionModel

    from dift_fast.backend_options import OrtOptions

    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    kwargs = {"model": str(tiny_model_dir), "backend": "onnxruntime", "device": "cpu", "ensemble_size": 2,
              "image_size": SIZE, "backend_options": OrtOptions(export_dir=tmp_path / "export")}
    first = DiftExtractor.from_pretrained(**kwargs)
    assert (tmp_path / "export" / "manifest.json").is_file()
    assert first.components.unet is None and first.components.vae is None
    loads = []
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", lambda *a, **k: loads.append(1))
    second = DiftExtractor.from_pretrained(**kwargs)
    images = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    assert loads == [] and torch.equal(second.extract(images), first.extract(images))


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size: only a content hash notices
    path.write_bytes(bytes(data))


def test_a_modified_export_folder_the_user_gave_is_refused(comps, fp32_export, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(fp32_export[0], copy)
    _flip_last_byte(copy / "vae_encoder.onnx")
    before = (copy / "vae_encoder.onnx").read_bytes()
    with pytest.raises(ManifestError, match=r"vae_encoder\.onnx content differs.*not used and not changed"):
        create(comps, torch.device("cpu"), torch.float32, export_dir=str(copy))
    assert (copy / "vae_encoder.onnx").read_bytes() == before  # the user's folder is left as it was


def test_a_modified_cached_export_is_exported_again(comps, tmp_path, monkeypatch):
    from dift_fast.export.manifest import file_sha256
    from dift_fast.export.resolve import resolve_export

    monkeypatch.setenv("DIFT_FAST_CACHE", str(tmp_path / "cache"))
    folder, manifest = resolve_export(comps, torch.float32, None)
    assert folder.parent == tmp_path / "cache" / "onnx"
    _flip_last_byte(folder / "unet.onnx")
    again, manifest2 = resolve_export(comps, torch.float32, None)
    assert again == folder and manifest2["export_key"] == manifest["export_key"]
    assert file_sha256(folder / "unet.onnx") == manifest2["files"]["unet.onnx"]["sha256"]  # the graph was rewritten
    load_manifest(folder)  # and checks out


def test_a_static_export_at_another_image_size_names_its_size(comps, fp32_export):
    """Images kept at their own size (image_size=None) reach a static export one by one: each other size is refused
    naming the export's (a configured image size is checked when the backend is made: the test above)."""
    extractor = DiftExtractor(comps, DiftConfig.from_preset("spair", model=str(comps.folder), ensemble_size=2,
                                                            image_size=None, device="cpu", backend="onnxruntime"),
                              export_dir=str(fp32_export[0]))
    assert extractor.extract(torch.zeros(1, 3, 48, 64)).shape[0] == 1  # the exported size runs
    with pytest.raises(ValueError, match=r"static: its graphs take 64x48 images only, not 64x64"):
        extractor.extract(torch.zeros(1, 3, 64, 64))


def test_export_never_writes_over_files_that_are_not_an_export(comps, fp32_export, tmp_path):
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        export_onnx(comps, not_a_folder, image_size=SIZE)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "unet.onnx").write_text("my own model")
    (theirs / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty \(thesis\.tex, unet\.onnx\) and holds no manifest\.json"):
        export_onnx(comps, theirs, image_size=SIZE)
    with pytest.raises(ValueError, match="holds no manifest"):  # the backend path goes through the same check
        create(comps, torch.device("cpu"), torch.float32, export_dir=str(theirs))
    assert (theirs / "unet.onnx").read_text() == "my own model" and sorted(p.name for p in theirs.iterdir()) == [
        "thesis.tex", "unet.onnx"]
    # An export killed before its manifest left graphs of its own: exporting there again finishes the job.
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(fp32_export[0], unfinished)
    (unfinished / "manifest.json").unlink()
    folder, manifest = export_onnx(comps, unfinished, image_size=SIZE)
    assert load_manifest(folder) == manifest
def test_bf16_is_refused_before_anything_is_exported(comps, tmp_path, monkeypatch):
    """bf16 is the CUDA default: onnxruntime refuses it at once, naming what to use, instead of after an export."""
    import dift_fast.export.resolve as resolve_mod

    monkeypatch.setattr(resolve_mod, "export_onnx", lambda *a, **k: pytest.fail("exported before refusing bf16"))
    with pytest.raises(ValueError, match=r"requested dtype is bf16.*dtype='fp16'.*backend='tensorrt'"):
        create(comps, torch.device("cpu"), torch.bfloat16, export_dir=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match=r"requested dtype is bf16"):
        create(comps, torch.device("cpu"), torch.bfloat16)  # into the export cache: refused as early


def test_an_existing_export_decides_the_dtype(comps, fp32_export):
    """A bf16 request with an fp32 export runs the export's fp32 graphs (the export's dtype wins)."""
    backend = create(comps, torch.device("cpu"), torch.bfloat16, export_dir=str(fp32_export[0]))
    assert backend.dtype == torch.float32


def test_cuda_graph_needs_a_static_export(fp16_dynamic_export):
    with pytest.raises(ValueError, match="cuda_graph needs a static-size export"):
        OrtBackend(fp16_dynamic_export[0], torch.device("cpu"), cuda_graph=True)


def test_a_static_export_of_another_size_is_refused(comps, fp32_export):
    config = DiftConfig.from_preset("spair", model=str(comps.folder), image_size=(64, 64))
    with pytest.raises(ValueError, match=r"static size 64x48.*64x64"):
        create(comps, torch.device("cpu"), torch.float32, export_dir=str(fp32_export[0]), config=config)
    good = DiftConfig.from_preset("spair", model=str(comps.folder), image_size=SIZE)
    assert create(comps, torch.device("cpu"), torch.float32, export_dir=str(fp32_export[0]), config=good)
