"""A stand-in extractor for edit propagation tests whose correspondences are known exactly.

Each image registered with a homography ``H`` (source pixels -> this image's pixels) gets, at every feature cell,
the random Fourier features of the *source* position that cell shows: ``phi(H^-1 p)`` at the cell centre ``p``.
``phi(q) = sqrt(2 / C) cos(omega q + b)`` makes the cosine of two positions about ``exp(-|q1 - q2|^2 / (2 L^2))``
(a Gaussian kernel of length ``L``), so a source point's nearest neighbour in a target is where ``H`` sends it.
Images that are not registered get random features (no correspondence at all).
"""

from __future__ import annotations

import numpy as np
import torch

from dift_fast import DiftConfig
from dift_fast.extractor import FeatureBatch
from dift_fast.images import prepare_image

__all__ = ["HomographyCodedExtractor", "apply_homography"]


def apply_homography(H: np.ndarray, points: np.ndarray) -> np.ndarray:  # [N, 2] -> [N, 2]
    pts = np.concatenate([np.asarray(points, dtype=np.float64), np.ones((len(points), 1))], axis=1) @ H.T
    return pts[:, :2] / pts[:, 2:]


class HomographyCodedExtractor:
    """Features that encode the source position each cell shows (see the module docstring)."""

    def __init__(self, channels: int = 256, stride: int = 8, length: float = 24.0, seed: int = 0,
                 image_size: tuple[int, int] | None = None) -> None:
        self.config = DiftConfig(model="homography-coded", image_size=image_size, ensemble_size=1, device="cpu", batch_size=1)
        self.device = torch.device("cpu")
        self.is_tiny = False
        self.stride = stride
        g = np.random.default_rng(seed)
        self.omega = g.normal(0.0, 1.0 / length, size=(channels, 2))
        self.phase = g.uniform(0.0, 2 * np.pi, size=channels)
        self.warps: dict[int, np.ndarray] = {}
        self.calls = 0

    def register(self, image, homography: np.ndarray) -> None:
        """Features of ``image`` (path, PIL image or uint8 array) show the source through ``homography``."""
        key = prepare_image(image, self.config.image_size).key  # the key extract_prepared will see
        self.warps[key] = np.asarray(homography, dtype=np.float64)

    def features(self, width: int, height: int, homography: np.ndarray | None,
                 original_size: tuple[int, int] | None = None) -> torch.Tensor:  # [C, h, w]
        """Features of a ``width`` x ``height`` (prepared) image; ``homography`` acts on original-size pixels."""
        s = self.stride
        h, w = height // s, width // s
        sx, sy = (original_size[0] / width, original_size[1] / height) if original_size else (1.0, 1.0)
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        # cell centres in original pixels (pixel centres scale about -0.5: p_orig = (p + 0.5) * scale - 0.5)
        centres = np.stack([(xs + 0.5) * s * sx - 0.5, (ys + 0.5) * s * sy - 0.5], axis=-1).reshape(-1, 2)
        if homography is None:
            feats = np.random.default_rng(self.calls).normal(size=(h * w, len(self.phase)))
        else:
            src = apply_homography(np.linalg.inv(homography), centres)
            feats = np.sqrt(2.0 / len(self.phase)) * np.cos(src @ self.omega.T + self.phase)
        return torch.from_numpy(feats.T.reshape(-1, h, w)).float()

    def extract_prepared(self, prepared, prompts=None):
        out = []
        for p in prepared:
            self.calls += 1
            _, height, width = p.pixels.shape
            out.append(self.features(width, height, self.warps.get(p.key), p.original_size))
        return FeatureBatch(torch.stack(out), [p.name for p in prepared], [p.original_size for p in prepared],
                            [p.key for p in prepared])
