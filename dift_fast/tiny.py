"""Tiny random-weight models of every backbone, generated locally (no download), for tests and smoke runs.

- ``tiny-random`` (:func:`tiny_model_dir`): a diffusers pipeline shaped like SD 2.x: the same component classes,
  block types, attention layout (linear projections, upcast attention, head dim per block), 8x VAE and
  v-prediction scheduler as SD 2.1, at a few MB.
- ``tiny-random-adm`` (:func:`tiny_adm_dir`): a guided-diffusion-shaped checkpoint (``torch.save`` state dict with
  guided-diffusion's own key names) with the 256x256 ADM's level layout -- six levels, attention at strides 8, 16,
  32, resblock up/downsampling, so the output blocks are numbered 0..17 like the real model's -- at a few MB,
  beside its ``UNet2DModel`` config.
- ``tiny-random-cleandift`` (:func:`tiny_cleandift_weights`): a 16-bit CleanDIFT-shaped UNet state dict for the
  ``tiny-random`` pipeline (the CleanDIFT backbone on ``tiny-random`` uses it instead of the real file).

Their features are meaningless: they are for smoke tests, CI and parity tests, never for correspondence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .atomic import atomic_folder
from .cache import cache_root

TINY_ADM_MODEL = "tiny-random-adm"
TINY_CLEANDIFT_WEIGHTS = "tiny-random-cleandift"
TINY_MARKER = "dift_fast_tiny_random"  # a file of this name (or a model_index.json key) marks a tiny model

_BYTE_CHARS: list[str] | None = None


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in its canonical order ('!' first)."""
    global _BYTE_CHARS
    if _BYTE_CHARS is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        bs += list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_CHARS = [chr(c) for c in cs]
    return _BYTE_CHARS


def _write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer with byte-level tokens and no merges (SD 2.x special tokens, pad '!' = id 0)."""
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "!",
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "!",
                "do_lower_case": True,
            }
        )
    )


def tiny_component_configs() -> dict[str, dict]:
    """Configs of the tiny pipeline's components (diffusers/transformers keyword arguments)."""
    unet = {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": [2, 2, 4, 4],
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "use_linear_projection": True,
        "upcast_attention": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    }
    text = {
        "vocab_size": 2 * 256 + 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 0,
        "projection_dim": 32,
    }
    scheduler = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler}


def build_tiny_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random SD-2.x-shaped pipeline in diffusers layout to ``folder`` and return its path.

    Deterministic for a given ``seed``. Loads with ``DiftExtractor.from_pretrained(folder)``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    configs = tiny_component_configs()
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    finally:
        torch.random.set_rng_state(generator_state)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    DDIMScheduler(**configs["scheduler"]).save_pretrained(folder / "scheduler")
    _write_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": "0.30.0",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "dift_fast_tiny_random": True,
            },
            indent=2,
        )
    )
    return folder


def tiny_model_dir() -> Path:
    """Where the built-in 'tiny-random' model lives (built on first use): ``cache_root()/tiny-random-v1``."""
    folder = cache_root() / "tiny-random-v1"
    if not (folder / "model_index.json").exists():
        try:
            with atomic_folder(folder) as tmp:
                build_tiny_pipeline(tmp)
        except FileExistsError:  # another process won the race; its copy is identical
            pass
    return folder


# -- tiny ADM --------------------------------------------------------------------------------------------------


def tiny_adm_config() -> dict:
    """``UNet2DModel`` config of the tiny ADM: the 256x256 model's six levels and attention strides, 32/64 channels."""
    return {
        "_class_name": "UNet2DModel",
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 6,
        "layers_per_block": 2,
        "block_out_channels": [32, 32, 32, 64, 64, 64],
        "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["AttnDownBlock2D"] * 3,
        "up_block_types": ["AttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"] * 3,
        "attention_head_dim": 16,
        "attn_norm_num_groups": 32,
        "norm_num_groups": 32,
        "resnet_time_scale_shift": "scale_shift",
        "upsample_type": "resnet",
        "downsample_type": "resnet",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "num_class_embeds": None,
    }


TINY_ADM_CHECKPOINT = "tiny_adm.pt"


def build_tiny_adm(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny ADM to ``folder``: ``config.json``, a guided-diffusion-keyed ``tiny_adm.pt`` and a marker.

    Every weight is random (guided-diffusion zero-initialises its output convolutions; random ones make every
    block's output depend on every weight): matrices and kernels normal with std 1/sqrt(fan-in), norm scales
    1 + 0.1·normal, biases 0.1·normal. Deterministic for a given ``seed``.
    """
    from diffusers import UNet2DModel

    from .backbones.adm_convert import to_guided_diffusion_state_dict

    folder = Path(folder)
    config = tiny_adm_config()
    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DModel.from_config(config)
    state = {}
    for key, value in unet.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        if value.ndim >= 2:
            state[key] = noise / value[0].numel() ** 0.5
        else:
            state[key] = 1.0 + 0.1 * noise if "norm" in key and key.endswith("weight") else 0.1 * noise
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(to_guided_diffusion_state_dict(state, config), folder / TINY_ADM_CHECKPOINT)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / TINY_MARKER).write_text("random weights: features are meaningless\n")
    return folder


def tiny_adm_dir() -> Path:
    """Where ``tiny-random-adm`` lives (built on first use): ``cache_root()/tiny-random-adm-v1``."""
    folder = cache_root() / "tiny-random-adm-v1"
    if not (folder / TINY_MARKER).exists():
        try:
            with atomic_folder(folder) as tmp:
                build_tiny_adm(tmp)
        except FileExistsError:  # another process won the race; its copy is identical
            pass
    return folder


# -- tiny CleanDIFT UNet weights ----------------------------------------------------------------------------------


def build_tiny_cleandift_weights(path: str | os.PathLike, seed: int = 1) -> Path:
    """A 16-bit state dict of a ``tiny-random``-shaped UNet (other random weights), CleanDIFT's file format."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_component_configs()["unet"])
    finally:
        torch.random.set_rng_state(generator_state)
    state = {k: v.half().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(path), metadata={TINY_MARKER: "1"})
    return Path(path)


def tiny_cleandift_weights() -> Path:
    """The tiny CleanDIFT UNet file (built on first use): ``cache_root()/tiny-random-cleandift-v1/...``."""
    folder = cache_root() / "tiny-random-cleandift-v1"
    path = folder / "cleandift_sd21_unet.safetensors"
    if not path.exists():
        try:
            with atomic_folder(folder) as tmp:
                build_tiny_cleandift_weights(Path(tmp) / path.name)
        except FileExistsError:
            pass
    return path
