"""Metric functions on hand-computed cases (each expected value is worked out in a comment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dift_fast.eval.datasets.davis import frame_size_rule
from dift_fast.eval.metrics.davis_jf import JFAccumulator, f_measure, jaccard, score_video, seg2bmap
from dift_fast.eval.metrics.homography import (
    HomographyAccumulator,
    corner_error,
    dedup_keypoints,
    estimate_homography,
    match_and_score,
)
from dift_fast.eval.metrics.pck import (
    PckAccumulator,
    bbox_threshold,
    correct_keypoints,
    keypoint_bbox_threshold,
)

# -- PCK --------------------------------------------------------------------------------------------------------


def test_bbox_threshold_has_no_plus_one():
    # [x1, y1, x2, y2] = [10, 20, 50, 40]: sides 40 and 20 -> 40 (the +1 convention would give 41).
    assert bbox_threshold([10, 20, 50, 40]) == 40.0
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        bbox_threshold([1, 2, 3])


def test_keypoint_bbox_threshold():
    # x spans 2..12 (10), y spans 5..25 (20) -> 20.
    assert keypoint_bbox_threshold(np.array([[2, 5], [12, 7], [4, 25]])) == 20.0
    assert keypoint_bbox_threshold(np.zeros((0, 2))) == 0.0


def test_correct_keypoints_boundary_is_inclusive():
    gt = np.array([[0, 0], [0, 0], [99, 79]])
    # distances 5 (3-4-5 triangle), just over 5, and 0 for a keypoint on the image corner.
    pred = np.array([[3, 4], [3, 4.01], [99, 79]])
    # threshold 50, alpha 0.1: 5 / 50 = 0.1 <= 0.1 is correct; 5.008 / 50 > 0.1 is not.
    assert correct_keypoints(pred, gt, 50.0, 0.1).tolist() == [True, False, True]


def test_correct_keypoints_zero_threshold_and_shapes():
    assert correct_keypoints(np.array([[1, 1], [1, 2]]), np.array([[1, 1], [1, 1]]), 0.0, 0.1).tolist() == [True,
                                                                                                           False]
    assert correct_keypoints(np.zeros((0, 2)), np.zeros((0, 2)), 10.0, 0.1).size == 0
    with pytest.raises(ValueError, match="same shape"):
        correct_keypoints(np.zeros((2, 2)), np.zeros((3, 2)), 10.0, 0.1)


def test_pck_pools_pairs_not_category_means():
    acc = PckAccumulator()
    acc.add("cat", np.array([True, False]))  # 1/2
    acc.add("dog", np.array([True, True, True]))  # 3/3
    acc.add("dog", np.array([True]))  # 1/1
    acc.add("cat", np.array([], dtype=bool))  # no visible keypoints: no PCK
    o = acc.overall()
    # per image: mean(0.5, 1, 1) = 83.33 (a mean of category means would be mean(50, 100) = 75).
    assert o["per_image"] == pytest.approx(250 / 3)
    # per point: 5 correct of 6.
    assert o["per_point"] == pytest.approx(500 / 6)
    assert (o["pairs"], o["keypoints"], o["empty_pairs"]) == (3, 6, 1)
    cats = acc.per_category()
    assert cats["cat"]["per_image"] == pytest.approx(50.0) and cats["cat"]["empty_pairs"] == 1
    assert cats["dog"]["per_point"] == pytest.approx(100.0)


def test_pck_with_only_empty_pairs_is_undefined():
    acc = PckAccumulator()
    acc.add("cat", np.array([], dtype=bool))
    assert acc.overall()["per_image"] is None and acc.overall()["per_point"] is None


# -- homography -------------------------------------------------------------------------------------------------


def test_corner_error_translation():
    shift = np.array([[1.0, 0, 2], [0, 1, 0], [0, 0, 1]])
    # every corner moves by 2 px -> mean corner error 2.
    assert corner_error(np.eye(3), shift, (640, 480)) == pytest.approx(2.0)
    acc = HomographyAccumulator()
    acc.add("i_x", corner_error(np.eye(3), shift, (640, 480)))
    # 2 <= 3 and <= 5 but not <= 1.
    assert acc.accuracy()["illumination"] == {"1px": 0.0, "3px": 100.0, "5px": 100.0}


def test_degenerate_and_failed_homographies_are_failures():
    assert corner_error(np.eye(3), None, (64, 48)) == math.inf
    assert corner_error(np.eye(3), np.zeros((3, 3)), (64, 48)) == math.inf  # 0/0 at every corner
    at_infinity = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]])  # w = 0: corners sent to infinity
    assert corner_error(np.eye(3), at_infinity, (64, 48)) == math.inf
    pts = np.random.default_rng(0).uniform(0, 50, size=(3, 2))
    assert estimate_homography(pts, pts) is None  # fewer than 4 correspondences
    same = np.ones((10, 2))
    assert estimate_homography(same, same + 1) is None  # all source points identical


def test_estimate_homography_recovers_exact_correspondences():
    H = np.array([[1.1, 0.05, 3.0], [-0.02, 0.95, -4.0], [1e-4, 2e-4, 1.0]])
    pts = np.random.default_rng(1).uniform(0, 200, size=(30, 2))
    proj = np.c_[pts, np.ones(30)] @ H.T
    proj = proj[:, :2] / proj[:, 2:]
    assert corner_error(H, estimate_homography(pts, proj), (200, 200)) < 1e-2


def test_homography_accumulator_groups():
    acc = HomographyAccumulator()
    for seq, err in (("i_a", 0.5), ("i_b", 4.0), ("v_a", math.inf), ("v_b", 2.0)):
        acc.add(seq, err)
    a = acc.accuracy()
    # overall errors (0.5, 4, inf, 2): <=1: 1/4, <=3: 2/4, <=5: 3/4.
    assert a["overall"] == {"1px": 25.0, "3px": 50.0, "5px": 75.0}
    assert a["illumination"] == {"1px": 50.0, "3px": 50.0, "5px": 100.0}
    assert a["viewpoint"] == {"1px": 0.0, "3px": 50.0, "5px": 50.0}
    with pytest.raises(ValueError, match="i_"):
        acc.add("boat", 1.0)
    assert HomographyAccumulator().accuracy()["overall"]["1px"] is None


def test_dedup_keypoints_keeps_descriptors_aligned():
    kps = np.array([[5.0, 1.0], [2.0, 3.0], [5.0, 1.0]])
    desc = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    u, d = dedup_keypoints(kps, desc)
    # np.unique sorts rows: (2, 3) then (5, 1); the first occurrence's descriptor is kept.
    assert u.tolist() == [[2.0, 3.0], [5.0, 1.0]]
    assert d.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_match_and_score_identical_images_is_exact():
    rng = np.random.default_rng(2)
    kps = rng.uniform(0, 100, size=(50, 2)).astype(np.float32)
    desc = torch.from_numpy(rng.normal(size=(50, 16)).astype(np.float32))
    err, n = match_and_score(kps, desc, kps.copy(), desc.clone(), np.eye(3), (100, 100))
    assert n == 50 and err < 1e-3
    err, n = match_and_score(kps[:0], desc[:0], kps, desc, np.eye(3), (100, 100))
    assert (err, n) == (math.inf, 0)


# -- DAVIS J and F ----------------------------------------------------------------------------------------------


def test_jaccard_hand_cases():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[0:2, 0:3] = True  # 6 px, 4 shared -> 4 / 6
    assert jaccard(gt, pred) == pytest.approx(2 / 3)
    empty = np.zeros((4, 4), bool)
    assert jaccard(empty, empty) == 1.0  # empty video mask and empty prediction: a perfect score
    assert jaccard(empty, pred) == 0.0


def test_seg2bmap_matches_hand_computation():
    seg = np.zeros((4, 4), bool)
    seg[1:3, 1:3] = True
    # b = seg^east | seg^south | seg^southeast, last row/column special-cased (boundary shifted to the origin).
    expected = [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert seg2bmap(seg).astype(int).tolist() == expected


def test_f_measure_hand_cases():
    gt = np.zeros((100, 100), bool)
    gt[10:30, 10:30] = True
    assert f_measure(gt, gt) == 1.0
    assert f_measure(gt, np.zeros_like(gt)) == 0.0  # nothing predicted: precision 1, recall 0
    assert f_measure(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    shifted = np.roll(gt, 2, axis=1)  # tolerance ceil(0.008 * hypot(100, 100)) = 2 px covers a 2 px shift
    assert f_measure(gt, shifted) == 1.0
    extra = gt.copy()
    extra[60:80, 60:80] = True  # a far second square with a boundary as long as the true one
    # recall 1, precision 1/2 -> F = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert f_measure(gt, extra) == pytest.approx(2 / 3)


def test_score_video_skips_first_and_last_frame():
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 1
    gt[0:2, 0:2] = 255  # void: background for scoring
    wrong = np.zeros_like(gt)
    wrong[0:3, 15:20] = 1
    preds = [wrong, np.where(gt == 255, 0, gt), np.zeros_like(gt), wrong]
    scores = score_video([gt] * 4, preds)
    # frames 1 and 2 are scored: J = (1 + 0) / 2, F = (1 + 0) / 2.
    assert scores == {1: {"J": 0.5, "F": 0.5}}


def test_empty_video_mask():
    empty = np.zeros((10, 10), np.uint8)
    assert score_video([empty] * 3, [empty] * 3) == {}  # no object in the first frame: nothing to score
    acc = JFAccumulator()
    acc.add("v", {})
    assert acc.summary() == {"J&F-Mean": None, "J-Mean": None, "F-Mean": None}
    # an object that leaves the frame: empty ground truth and empty prediction score 1.
    first = empty.copy()
    first[2:5, 2:5] = 1
    scores = score_video([first, empty, empty], [first, empty, empty])
    assert scores == {1: {"J": 1.0, "F": 1.0}}
    acc.add("w", scores)
    assert acc.summary() == {"J&F-Mean": 100.0, "J-Mean": 100.0, "F-Mean": 100.0}


def test_frame_size_rule():
    assert frame_size_rule(854, 480) == (832, 480)  # the spec's example
    assert frame_size_rule(480, 854) == (480, 832)
    assert frame_size_rule(64, 48, short_side=48) == (64, 48)
