"""One feature identity (dift_fast/identity.py): what it holds, and every place that keeps features uses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast.cli import main
from dift_fast.eval.features import FeatureCache
from dift_fast.identity import (
    ModelIdentity,
    config_identity,
    describe_diff,
    extractor_identity,
    feature_identity,
)
from dift_fast.io import load_features
from dift_fast.store import FeatureStore, StoreConfigError, StoreJob, extract_to_store

TINY = ["--ensemble-size", "2", "--image-size", "64x48", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def fine_tune_of(model: Path, out: Path) -> Path:
    """A copy of ``model`` with one UNet weight changed: same shapes, same file sizes, other content."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 0.5
    size = weights.stat().st_size
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == size  # what the old size fingerprint saw: nothing changed
    return out


def test_a_fine_tune_with_the_same_shapes_never_resumes_into_the_base_models_store(
    images, tiny_model_dir, tiny_extractor_factory, tmp_path
):
    from dift_fast import DiftExtractor

    base = tiny_extractor_factory()
    out = tmp_path / "store"
    extract_to_store(StoreJob(inputs=[str(images)], out=str(out), config=base.config), base)
    tuned_dir = fine_tune_of(tiny_model_dir, tmp_path / "tuned")
    tuned = DiftExtractor.from_pretrained(config=base.config.replace(model=str(tuned_dir)))
    with pytest.raises(StoreConfigError, match=r"model_sha256: store has '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        extract_to_store(StoreJob(inputs=[str(images)], out=str(out), config=tuned.config), tuned)
    assert len(FeatureStore.open(out)) == 3  # the base model's store is untouched


def test_the_identity_is_the_content_not_the_name_or_place(tiny_model_dir, tiny_extractor_factory, tmp_path):
    from dift_fast import DiftExtractor

    ext = tiny_extractor_factory()
    moved = shutil.copytree(tiny_model_dir, tmp_path / "renamed-copy")
    other = DiftExtractor.from_pretrained(config=ext.config.replace(model=str(moved), batch_size=3))
    assert extractor_identity(other) == extractor_identity(ext)  # batch size, folder name and place stay out
    assert config_identity(ext.config) == extractor_identity(ext)  # the prediction without loading agrees
    ident = extractor_identity(ext)
    assert ident["graph_dtype"] == "fp32" and ident["backend"] == "torch" and ident["device_type"] == "cpu"
    assert ident["block"] == 1 and ident["ensemble_size"] == 2 and ident["image_size"] == [64, 48]
    assert len(ident["model_sha256"]) == 64 and ident["noise_contract"] == 1
    for change in ({"t": 100}, {"seed": 1}, {"prompt": "a cat"}, {"ensemble_size": 3}, {"image_size": (64, 64)}):
        assert extractor_identity(tiny_extractor_factory(**change)) != ident, change


def test_the_graph_dtype_is_what_ran_not_what_was_configured(tiny_extractor_factory):
    ext = tiny_extractor_factory(dtype="fp32")
    real = ext.backend
    try:
        ext.backend = SimpleNamespace(name="onnxruntime", dtype=torch.float16)  # an fp16 export wins over fp32
        ident = extractor_identity(ext)
        assert ident["backend"] == "onnxruntime" and ident["graph_dtype"] == "fp16"
        ext.backend = SimpleNamespace(name="onnxruntime", dtype=torch.float32)  # fp32 graph, TensorRT EP in fp16
        ext.backend_options = SimpleNamespace(provider="tensorrt", fp16=True)
        assert extractor_identity(ext)["graph_dtype"] == "fp16"
    finally:
        ext.backend = real


def test_eval_cache_keeps_cpu_fp32_and_gpu_bf16_apart(tiny_extractor_factory, tmp_path):
    """The same config (dtype None: fp32 on the CPU, bf16 on CUDA) that ran differently gets its own cache."""
    cpu = tiny_extractor_factory()
    gpu_like = tiny_extractor_factory(dtype="bf16")
    gpu_like.config = gpu_like.config.replace(dtype=None)  # as on a GPU: configured None, ran bf16
    assert gpu_like.config == cpu.config
    gpu_like.device = torch.device("cuda")
    a, b = FeatureCache(tmp_path, cpu), FeatureCache(tmp_path, gpu_like)
    assert a.dir != b.dir
    assert a.identity["graph_dtype"] == "fp32" and b.identity["graph_dtype"] == "bf16"
    assert json.loads((b.dir / "identity.json").read_text())["device_type"] == "cuda"
    with pytest.raises(TypeError, match="config alone"):
        FeatureCache(tmp_path, cpu.config)


def test_extract_writes_the_identity_and_index_query_refuses_another(
    images, tiny_model_dir, tiny_extractor_factory, tmp_path, capsys
):
    pytest.importorskip("faiss", reason="the index needs faiss (dift-fast[faiss])")
    files = sorted(str(p) for p in images.glob("*.png"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["extract", *files, "--out", str(a), "--model", str(tiny_model_dir), *TINY]) == 0
    assert main(["extract", *files, "--out", str(b), "--model", str(tiny_model_dir), *TINY, "--seed", "7"]) == 0
    assert load_features(a).identity == extractor_identity(tiny_extractor_factory())
    index = tmp_path / "g.index"
    assert main(["index", "build", str(a), "--out", str(index), "--device", "cpu"]) == 0
    query = ["index", "query", str(index), "--image", Path(files[0]).name, "--points", "10,10", "--device", "cpu"]
    assert main(query) == 0
    capsys.readouterr()
    # Same images, same names, other features (another seed): refused, naming the difference.
    assert main([*query, "--features", str(b)]) == 2
    err = capsys.readouterr().err
    assert "other features than the index" in err and "seed: index has 0, file has 7" in err


def test_a_scheduler_with_fewer_steps_than_t_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    from dift_fast import DiftExtractor

    model = shutil.copytree(tiny_model_dir, tmp_path / "short")
    cfg_path = model / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_train_timesteps"] = 100
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"t=261 is not a step of the model's noise schedule, which has 100 steps"):
        DiftExtractor.from_pretrained(str(model), device="cpu")
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 48)).save(image)
    assert main(["extract", str(image), "--out", str(tmp_path / "f.safetensors"), "--model", str(model), *TINY]) == 2
    assert "100 steps" in capsys.readouterr().err


def test_the_schedule_part_is_what_decides_alpha_bar(tiny_model_dir, tiny_extractor_factory, tmp_path):
    """A scheduler config that differs only in sampling settings is the same schedule; another beta_end is not."""
    base = config_identity(tiny_extractor_factory().config)

    def with_scheduler(name, **changes):
        model = shutil.copytree(tiny_model_dir, tmp_path / name)
        path = model / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return config_identity(tiny_extractor_factory().config.replace(model=str(model)))

    sampling = with_scheduler("sampling", steps_offset=7, _diffusers_version="9.9")
    assert sampling["schedule"] == base["schedule"]
    other = with_scheduler("beta", beta_end=0.02)
    assert other["schedule"]["beta_end"] == 0.02 and other["schedule"] != base["schedule"]


def test_feature_identity_takes_the_backbone_model_identity_dict():
    model = {"backbone": "adm", "content_hash": "ab" * 32, "schedule": {"kind": "linear", "steps": 1000}}
    kwargs = {
        "t": 101,
        "block": 4,
        "ensemble_size": 8,
        "prompt": "",
        "seed": 0,
        "image_size": (256, 256),
        "backend": "torch",
        "graph_dtype": "fp32",
        "device_type": "cuda",
    }
    ident = feature_identity(model, **kwargs)
    assert ident == feature_identity(ModelIdentity.of(model), **kwargs)
    assert ident["backbone"] == "adm" and ident["model_sha256"] == "ab" * 32 and ident["image_size"] == [256, 256]
    with pytest.raises(ValueError, match="content_hash"):
        feature_identity({**model, "content_hash": "short"}, **kwargs)
    with pytest.raises(ValueError, match="device_type"):
        feature_identity(model, **{**kwargs, "device_type": "cuda:1"})
    assert describe_diff(ident, {**ident, "schedule": {"kind": "linear", "steps": 500}}) == (
        "schedule.steps: store has 1000, this run 500"
    )


def test_one_store_takes_one_device_type():
    from dift_fast.store.runner import _check_one_device_type

    _check_one_device_type(["cuda:0", "cuda:1"])
    with pytest.raises(ValueError, match="mixes device types"):
        _check_one_device_type(["cpu", "cuda:0"])
