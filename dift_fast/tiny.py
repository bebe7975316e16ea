"""A tiny random-weight pipeline shaped like SD 2.x, generated locally (no download).

It has the same component classes, block types, attention layout (linear projections, upcast attention, head
dim per block), 8x VAE and v-prediction scheduler as SD 2.1, at a few MB. Its features are meaningless: it is
for smoke tests, CI and parity tests, never for correspondence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .atomic import atomic_folder
from .cache import cache_root

TINY_WARNING = "model 'tiny-random' has random weights: its features are meaningless (smoke test only)"

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
