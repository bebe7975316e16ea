"""Built-in component configs of the real-size architectures, to build them with random weights (no download).

``sd21``: Stable Diffusion 2.1 (768-v) in diffusers/transformers layout (``unet/``, ``vae/``, ``text_encoder/``
``config.json`` and ``scheduler/scheduler_config.json``; no tokenizer files, no weights). ``adm256``: OpenAI
guided-diffusion's 256x256 unconditional model as a diffusers ``UNet2DModel`` config (the paper's DIFT_adm).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ARCHITECTURES", "architecture_dir"]

ARCHITECTURES = ("sd21", "adm256")


def architecture_dir(name: str) -> Path:
    """The folder holding the built-in configs of architecture ``name`` (one of :data:`ARCHITECTURES`)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; built-in ones are {', '.join(ARCHITECTURES)}")
    return Path(__file__).resolve().parent / name
