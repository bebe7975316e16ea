"""The GPU memory estimate of benchmarks/bench_presets.py counts live activation bytes as hand-counted cases say."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_presets import peak_activations


def test_live_bytes_follow_creation_and_release():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        x = torch.zeros(3, 4)
    # input 3x4 (48 B) stays alive; Linear -> 3x8 (96 B); ReLU -> 3x8 (96 B) while the Linear output is still
    # referenced; then the Linear output is released and the last Linear adds 3x2 (24 B): peak 48 + 96 + 96 = 240.
    assert peak_activations(net, (x,), fused_attention=True) == 240


class Attention(nn.Module):
    def forward(self, q):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_attention_fused_or_materialised():
    with torch.device("meta"):
        q = torch.zeros(1, 2, 100, 8)  # 2 heads, 100 tokens, 8 dims: 6400 B
    fused = peak_activations(Attention(), (q,), fused_attention=True)
    materialised = peak_activations(Attention(), (q,), fused_attention=False)
    assert fused == 2 * 6400  # the input and the output only
    scores = 2 * 100 * 100 * 4  # one [2, 100, 100] float32 attention matrix
    assert materialised >= 6400 + scores and materialised > fused
