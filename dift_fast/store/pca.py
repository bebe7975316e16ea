"""Channel reduction of feature maps by PCA, fitted on a sample of images (float64 on the CPU: deterministic)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_atomic

__all__ = ["Pca", "fit_pca", "sample_names"]


@dataclass
class Pca:
    """``project(F) = components @ (F - mean)`` over the channel axis."""

    mean: torch.Tensor  # [C] float64
    components: torch.Tensor  # [D, C] float64, rows orthonormal, by decreasing variance
    explained_variance_ratio: torch.Tensor  # [D] float64: share of the sample's total variance per component
    sample_size: int  # images the fit used

    def project(self, features: torch.Tensor) -> torch.Tensor:  # [C, h, w] -> [D, h, w] float32
        if features.ndim != 3 or features.shape[0] != self.mean.shape[0]:
            raise ValueError(f"PCA expects features [{self.mean.shape[0]}, h, w], got {list(features.shape)}")
        x = features.detach().to("cpu", torch.float64) - self.mean[:, None, None]
        return torch.einsum("dc,chw->dhw", self.components, x).float()

    def save(self, path: Path, tmp_dir: Path) -> None:
        from safetensors.torch import save

        blob = save(
            {"mean": self.mean, "components": self.components, "explained_variance_ratio": self.explained_variance_ratio},
            metadata={"sample_size": str(self.sample_size),
                      "explained_variance": json.dumps(float(self.explained_variance_ratio.sum()))},
        )
        write_atomic(path, blob, tmp_dir=tmp_dir)

    @classmethod
    def load(cls, path: Path) -> Pca:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        return cls(t["mean"], t["components"], t["explained_variance_ratio"], int(meta.get("sample_size", 0)))


def fit_pca(feature_maps: Sequence[torch.Tensor], dim: int) -> Pca:
    """Fit a ``dim``-component PCA on the pixel vectors of ``feature_maps`` (each [C, h, w])."""
    if not feature_maps:
        raise ValueError("PCA: no feature maps to fit on (every sample image failed?)")
    c = feature_maps[0].shape[0]
    if not 1 <= dim <= c:
        raise ValueError(f"--pca {dim}: must be between 1 and the feature's {c} channels")
    x = torch.cat([f.detach().to("cpu", torch.float64).reshape(c, -1) for f in feature_maps], dim=1)  # [C, N]
    mean = x.mean(dim=1)
    xc = x - mean[:, None]
    cov = xc @ xc.T / max(x.shape[1] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    comps = evecs[:, :dim].T.contiguous()  # [D, C]
    # Eigenvectors are defined up to sign: make each one's largest entry positive so refits agree.
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps[torch.arange(dim), idx])
    comps = comps * signs[:, None]
    total = evals.sum()
    ratio = evals[:dim] / total if total > 0 else torch.zeros(dim, dtype=torch.float64)
    return Pca(mean, comps, ratio, len(feature_maps))


def sample_names(names: Sequence[str], k: int) -> list[str]:
    """``k`` names spread evenly over the sorted list (the same sample however often the run restarts)."""
    names = sorted(names)
    if len(names) <= k:
        return names
    if k <= 1:
        return names[:k]
    return [names[i * (len(names) - 1) // (k - 1)] for i in range(k)]
