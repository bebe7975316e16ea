"""Label propagation against a literal transcription of the reference's dense computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dift_fast.eval.propagation import PropagationParams, VideoPropagator, finalize_labels, propagate_labels, to_one_hot


def reference_propagation(target, context, labels, params):
    """DIFT eval_davis.label_propagation, written out densely (the 4-nested-loop window mask included)."""
    C, h, w = target.shape
    K = context.shape[0]
    feat_tar = F.normalize(target.reshape(C, h * w).T, dim=1, p=2)  # hw x C
    feat_sources = F.normalize(context.reshape(K, C, h * w), dim=1, p=2)  # K x C x hw
    aff = torch.exp(torch.bmm(feat_tar.unsqueeze(0).repeat(K, 1, 1), feat_sources) / params.temperature)
    if params.radius > 0:
        r = params.radius
        mask = torch.zeros(h, w, h, w)
        for i in range(h):
            for j in range(w):
                for p in range(2 * r + 1):
                    for q in range(2 * r + 1):
                        if 0 <= i - r + p < h and 0 <= j - r + q < w:
                            mask[i, j, i - r + p, j - r + q] = 1
        aff *= mask.reshape(h * w, h * w).unsqueeze(0)
    aff = aff.transpose(2, 1).reshape(-1, h * w)  # K*hw keys x hw queries
    tk_val, _ = torch.topk(aff, dim=0, k=params.topk)
    tk_val_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_val_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, axis=0)
    L = labels.shape[1]
    segs = labels.reshape(K, L, -1).transpose(2, 1).reshape(-1, L).T
    return torch.mm(segs, aff).reshape(L, h, w)


@pytest.mark.parametrize("radius", [2, 0])
def test_propagation_matches_reference(radius):
    g = torch.Generator().manual_seed(3)
    C, h, w, K, L = 8, 5, 6, 3, 3
    target = torch.randn(C, h, w, generator=g)
    context = torch.randn(K, C, h, w, generator=g)
    labels = torch.rand(K, L, h, w, generator=g)
    params = PropagationParams(temperature=0.2, n_last_frames=2, topk=4, radius=radius)
    ours = propagate_labels(target, context, labels, params, chunk=7)  # chunks that do not divide hw
    ref = reference_propagation(target, context, labels, params)
    # Same float32 operations in a different grouping: agreement to a few ulp of values in [0, 1].
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_propagation_shape_errors():
    params = PropagationParams()
    with pytest.raises(ValueError, match="target"):
        propagate_labels(torch.zeros(4, 3, 3), torch.zeros(1, 4, 3, 2), torch.zeros(1, 2, 3, 3), params)


def test_video_propagator_context_queue():
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(6, 4, 4, generator=g) for _ in range(5)]
    first = to_one_hot(np.zeros((4, 4), dtype=np.int64), 2)
    prop = VideoPropagator(feats[0], first, PropagationParams(n_last_frames=2, topk=3, radius=1))
    for f in feats[1:]:
        prop.step(f)
    # the queue holds the last two frames (the first frame is always in the context besides them).
    assert len(prop.queue) == 2 and prop.queue[-1][0] is feats[-1]


def test_to_one_hot():
    oh = to_one_hot(np.array([[0, 2], [1, 0]]), 3)
    assert oh.shape == (3, 2, 2) and oh[2, 0, 1] == 1 and oh.sum() == 4
    with pytest.raises(ValueError, match="does not fit"):
        to_one_hot(np.array([[3]]), 3)


def test_finalize_labels_bilinear_argmax_nearest():
    soft = torch.zeros(2, 3, 4)
    soft[0] = 1.0
    soft[1, 1:3, 1:3] = 0.9  # an object on cells rows 1-2, columns 1-2
    soft[0, 1:3, 1:3] = 0.1
    labels = finalize_labels(soft, stride=4, original_size=(32, 24))  # upsampled to 16x12, then resized 2x
    # After min-max normalisation channel 1 is the bilinear interpolation of the object indicator and channel 0
    # its complement, so a pixel is object where that interpolation exceeds 0.5. Pixel i samples cell
    # coordinate (i + 0.5) / 4 - 0.5 (clamped at the borders); the 1-D interpolations are
    wy = np.array([0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1, 1, 1])
    wx = np.array([0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0])
    expected = (wy[:, None] * wx[None, :] > 0.5).astype(np.uint8)  # e.g. pixel (4, 4): 0.39 -> background
    assert labels.shape == (24, 32)
    assert (labels == np.kron(expected, np.ones((2, 2), np.uint8))).all()
