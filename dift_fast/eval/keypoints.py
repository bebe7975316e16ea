"""Keypoints and descriptors for the homography benchmarks.

Descriptors follow the HPatches protocol of spec §4: the feature map of the resized image is sampled at the
keypoints of the original image with ``grid_sample`` (the reference's normalisation by ((W-1)/2, (H-1)/2)).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["detect_keypoints", "keypoint_descriptors"]


def detect_keypoints(image_rgb: np.ndarray, max_keypoints: int = 1000) -> np.ndarray:
    """The ``max_keypoints`` strongest OpenCV SIFT keypoints of a uint8 RGB image, [N, 2] (x, y) float32.

    A stand-in for the paper's SuperPoint keypoints when none are given; sorted by response, then position,
    so the result is deterministic.
    """
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
    kps = cv2.SIFT_create().detect(gray, None)
    pts = sorted((-k.response, k.pt[1], k.pt[0]) for k in kps)[:max_keypoints]
    return np.asarray([(x, y) for _, y, x in pts], dtype=np.float32).reshape(-1, 2)


def keypoint_descriptors(
    features: torch.Tensor,  # [C, h, w]
    keypoints: np.ndarray,  # [N, 2] (x, y) in original-image pixels
    image_size: tuple[int, int],  # (W, H) of the original image
) -> torch.Tensor:  # [N, C]
    """Descriptors at ``keypoints`` with the reference's sampling convention."""
    from ..matching import sample_descriptors

    pts = torch.as_tensor(np.asarray(keypoints, dtype=np.float32)).reshape(-1, 2)
    if len(pts) == 0:
        return features.new_zeros(0, features.shape[0])
    return sample_descriptors(features.float(), pts, image_size, convention="reference")
