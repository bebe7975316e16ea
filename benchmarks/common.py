"""Helpers shared by the benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and GPU (if any) of this machine."""
    import os

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times in seconds of ``repeats`` calls after ``warmup`` calls (CPU: perf_counter)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_delta(fn: Callable[[], Any]) -> float | None:
    """Run fn() once; the peak resident memory above the level just before it, in MiB (None if not Linux).

    Resets the high-water mark (VmHWM) through /proc/self/clear_refs. Call it in a fresh process: an allocator
    that already holds memory freed by earlier runs hides the peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, payload: dict[str, Any], table: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` and return the JSON path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS_DIR / f"{name}.md").write_text(table)
    return path


def random_components(config: Any, seed: int = 0, *, blocks: Any = None) -> Any:
    """Random-weight :class:`~dift_fast.loading.DiftComponents` of a real-size architecture, for ``config``.

    Nothing is downloaded: SD and CleanDIFT are built from the packaged ``sd21`` configs (``config.model`` is that
    folder, or another diffusers config folder) with the tiny model's byte-level tokenizer (its ids stay inside the
    real vocabulary); ADM from the packaged ``adm256`` config (``config.model="adm"``). The networks are truncated
    after ``config.up_ft_index`` as the loader would; the weights are diffusers' random initialisation.

    With ``blocks`` (SD only), a dict ``{k: DiftComponents}`` truncated after each block k, all views of one random
    UNet (its modules shared, not copied) with one encoder and text encoder.
    """
    import gc

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dift_fast.backbones.base import DiftComponents
    from dift_fast.backbones.registry import backbone_for

    torch.manual_seed(seed)
    backbone = backbone_for(config)
    block = config.up_ft_index
    if not backbone.has_encoder:  # ADM: pixel space, no text
        from dift_fast.backbones.adm import build_adm_unet
        from dift_fast.backbones.adm_network import TruncatedADM

        network = TruncatedADM(build_adm_unet(dict(backbone.architecture), device="cpu"), block)
        gc.collect()
        return DiftComponents(backbone, block, network.eval().requires_grad_(False))
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dift_fast.tiny import _write_tokenizer
    from dift_fast.unet import TruncatedUNet, VaeEncoder

    folder = Path(config.model)
    backbone.__dict__["source"] = folder  # configs only (no weights, no tokenizer): skip the model-folder check

    def read(component: str) -> dict[str, Any]:
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        return json.loads((folder / component / name).read_text())

    full = UNet2DConditionModel.from_config(read("unet"))
    networks = {k: TruncatedUNet(full, k) for k in (blocks if blocks is not None else [block])}
    del full
    encoder = VaeEncoder(AutoencoderKL.from_config(read("vae")))
    text_cfg = {k: v for k, v in read("text_encoder").items() if k != "architectures"}
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    tok_dir = Path("/tmp/dift-fast-bench-tokenizer")
    _write_tokenizer(tok_dir)
    gc.collect()
    for module in (*networks.values(), encoder, text):
        module.eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    made = {k: DiftComponents(backbone, k, net, encoder, text, tokenizer) for k, net in networks.items()}
    return made if blocks is not None else made[block]
