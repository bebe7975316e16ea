"""Prompt embeddings: the text encoder's last hidden state, as the reference computes it (spec §2.4)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["encode_prompt"]


@torch.inference_mode()
def encode_prompt(tokenizer: Any, text_encoder: torch.nn.Module, prompt: str) -> torch.Tensor:  # [77, D] float32
    """Embedding of ``prompt``: padded to the tokenizer's 77 tokens, truncated, no attention mask.

    Returns the last hidden state ``[77, D]`` in float32 on the text encoder's device.
    """
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.input_ids.to(device))[0][0].float()
