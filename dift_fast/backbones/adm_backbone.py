"""DIFT_adm as a backbone: guided-diffusion's 256x256 unconditional ADM in pixel space (spec §6).

No encoder (the diffusion space is the image in [-1, 1], so no posterior noise is drawn), no text, guided-diffusion's
float64 linear schedule (:class:`~dift_fast.schedule.LinearSchedule`), x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε with contract
noise stream 1 over the image's flat [3, H, W] index, the raw integer t, and the feature = output block k
(:class:`~dift_fast.backbones.adm_network.TruncatedADM`, numbered 0..17) averaged over E. Sizes are multiples of 32.

The model is:

- a checkpoint file, ``256x256_diffusion_uncond.pt`` (:data:`~dift_fast.backbones.adm.ADM_CHECKPOINT_URL`, research
  use only) or a safetensors copy: the packaged ``adm256`` architecture;
- a folder with a ``UNet2DModel`` ``config.json`` and one checkpoint (other sizes of the same family);
- ``tiny-random-adm``: the built-in random-weight test model (:func:`dift_fast.tiny.tiny_adm_dir`);
- ``adm`` / ``adm256``: the packaged architecture without weights (``dift-fast info`` only).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_MODEL
from ..hashing import file_sha256
from ..schedule import LinearSchedule
from ..tiny import TINY_ADM_MODEL, TINY_MARKER
from .adm import ADM_CHECKPOINT_NAME, ADM_CHECKPOINT_URL, ADM_CONVERTER_VERSION, adm_config, load_adm_truncated
from .adm_network import TruncatedADM, adm_block
from .base import Backbone, BlockInfo, ModelLoadError, content_digest
from .catalog import CHECKPOINT_SUFFIXES

__all__ = ["ARCHITECTURE_ONLY", "AdmBackbone"]

ARCHITECTURE_ONLY = ("adm", "adm256")  # model names meaning the packaged architecture, without weights


def adm_download_advice() -> str:
    """How to get guided-diffusion's checkpoint (a plain download: it is not on the Hugging Face hub)."""
    from .hub import download_advice

    return download_advice(ADM_CHECKPOINT_NAME, url=ADM_CHECKPOINT_URL, use=f"--model {ADM_CHECKPOINT_NAME}")


class AdmBackbone(Backbone):
    """guided-diffusion ADM (DIFT_adm): pixel space, no text, linear schedule, output blocks 0..17."""

    name = "adm"
    has_encoder = False

    def _resolve_source(self) -> Path:
        model = self.model_id
        if model == TINY_ADM_MODEL:
            from ..tiny import tiny_adm_dir

            return tiny_adm_dir()
        if model in ARCHITECTURE_ONLY or model == DEFAULT_MODEL:
            what = "is the architecture only (no weights)" if model != DEFAULT_MODEL else "is the SD default model"
            raise ModelLoadError(
                f"model {model!r} {what}; DIFT_adm needs guided-diffusion's checkpoint {ADM_CHECKPOINT_NAME} (2.2 GB) "
                f"from {ADM_CHECKPOINT_URL}: {adm_download_advice()} For an offline smoke test use "
                f"'{TINY_ADM_MODEL}'."
            )
        path = Path(model).expanduser()
        if path.is_dir():
            self._folder_checkpoint(path)  # checked now: a clear error before anything else
            return path
        if not path.is_file():
            raise ModelLoadError(f"ADM checkpoint {path} does not exist. {adm_download_advice()}")
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelLoadError(f"ADM checkpoint {path} must be one of {', '.join(CHECKPOINT_SUFFIXES)}")
        return path

    @staticmethod
    def _folder_checkpoint(folder: Path) -> Path:
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"ADM model folder {folder} has no config.json (a diffusers UNet2DModel config); "
                f"or pass the checkpoint file itself"
            )
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
        if len(found) != 1:
            raise ModelLoadError(
                f"ADM model folder {folder} must hold exactly one checkpoint "
                f"({', '.join(CHECKPOINT_SUFFIXES)}); found {[p.name for p in found]}"
            )
        return found[0]

    @property
    def checkpoint(self) -> Path:
        """The checkpoint file the weights come from."""
        source = self.source
        return self._folder_checkpoint(source) if source.is_dir() else source

    @cached_property
    def architecture(self) -> dict[str, Any]:
        """The ``UNet2DModel`` config: the folder's, the tiny model's, or the packaged ``adm256`` one (no weights)."""
        if self.model_id == TINY_ADM_MODEL:
            from ..tiny import tiny_adm_config

            return tiny_adm_config()
        path = Path(self.model_id).expanduser()
        if self.model_id not in ARCHITECTURE_ONLY and path.is_dir() and (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except (OSError, ValueError) as err:
                raise ModelLoadError(f"ADM model folder {path}: config.json is unreadable ({err})") from None
            if not isinstance(config, dict) or config.get("_class_name") != "UNet2DModel":
                raise ModelLoadError(
                    f"ADM model folder {path}: config.json is not a diffusers UNet2DModel config "
                    f"(_class_name {config.get('_class_name') if isinstance(config, dict) else None!r})"
                )
            return config
        return adm_config()

    def _make_schedule(self) -> LinearSchedule:
        return LinearSchedule()

    @property
    def is_tiny(self) -> bool:
        if self.model_id == TINY_ADM_MODEL:
            return True
        path = Path(self.model_id).expanduser()
        return (path if path.is_dir() else path.parent).joinpath(TINY_MARKER).is_file()

    def block_info(self, block: int) -> BlockInfo:
        info = adm_block(self.architecture, self.check_block(block))
        return BlockInfo(block, info.channels, info.stride)

    def weight_files(self) -> list[Path]:
        files = [self.checkpoint]
        if self.source.is_dir():
            files.append(self.source / "config.json")
        return files

    def content_hash(self) -> str:
        """sha256 over the checkpoint's sha256, the converter version and the architecture config."""
        return content_digest(
            {
                "checkpoint_sha256": file_sha256(self.checkpoint),
                "converter_version": ADM_CONVERTER_VERSION,
                "architecture": self.architecture,
            }
        )

    def load_network(self, block: int, dtype: torch.dtype = torch.float32) -> TruncatedADM:
        return load_adm_truncated(self.checkpoint, self.check_block(block), dtype=dtype, config=dict(self.architecture))

    def costs(self, image_size: tuple[int, int], block: int) -> Any:
        from ..flops import CostReport
        from .adm_costs import measure_adm_costs

        report = measure_adm_costs(image_size, self.check_block(block), dict(self.architecture))
        return CostReport(
            image_size=report.image_size,
            block=block,
            network_parameters=report.truncated_parameters,
            network_total_parameters=report.total_parameters,
            encoder_parameters=None,
            text_encoder_parameters=None,
            encoder_flops=0,
            network_flops=report.flops,
        )
