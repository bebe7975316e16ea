"""Fast point transfer against the literal reference; keypoint descriptors; mutual nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dift_fast.faiss_utils import faiss_available, faiss_gpu_count
from dift_fast.matching import (
    cosine_maps,
    dense_mutual_nearest_neighbors,
    match_points,
    match_points_reference,
    mutual_nearest_neighbors,
    sample_descriptors,
)
from dift_fast.matching.transfer import _linear_weights, _upsampled_inverse_norms

# ---------------------------------------------------------------------------------------------------------------
# Feature maps


def random_map(c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(c, h, w, generator=gen)


def smooth_map(c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Low-frequency map plus a little noise: the cosine surface is flat near its maximum (many near-ties)."""
    coarse = torch.randn(1, c, 4, 5, generator=gen)
    up = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    return up + 0.05 * torch.randn(c, h, w, generator=gen)


def repetitive_map(c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A 3x4 tile repeated with tiny noise (exact repeats would make the argmax a float-rounding coin toss)."""
    tile = torch.randn(c, 3, 4, generator=gen)
    rep = tile.repeat(1, h // 3 + 1, w // 4 + 1)[:, :h, :w]
    return rep + 1e-3 * torch.randn(c, h, w, generator=gen)


MAPS = {"random": random_map, "smooth": smooth_map, "repetitive": repetitive_map}

# (C, source map h x w, source image W x H, target map h x w, target image W x H): odd sizes, non-integer
# scales (about 4x to 10x, as in use), and a target map larger than its image (downsampling).
CASES = [
    (32, (13, 17), (131, 97), (11, 9), (71, 103)),
    (24, (9, 12), (40, 33), (12, 10), (7, 9)),
    (32, (24, 32), (250, 190), (20, 28), (223, 161)),
]
# Degenerate geometry: an identity-sized source, one-cell-wide maps, 10x upsampling of 5x6 cells. Here a large
# part of the target is a border plateau of pixels that equal one cell exactly in real arithmetic; the reference's
# float32 rounding picks among them arbitrarily, the fast version picks the first (the spec's tie rule).
DEGENERATE = [
    (16, (7, 7), (7, 7), (5, 6), (61, 49)),
    (8, (1, 6), (37, 5), (6, 1), (3, 29)),
]
NEAR_TIE = 5e-7  # a few float32 ulps of a cosine near 1: the reference's own rounding noise


def query_points(size: tuple[int, int], n: int, gen: torch.Generator) -> torch.Tensor:
    """n random pixels plus every corner and edge midpoint (border points)."""
    w, h = size
    border = torch.tensor([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [w // 2, 0], [0, h // 2],
                           [w - 1, h // 2], [w // 2, h - 1]])
    rand = torch.stack([torch.randint(0, w, (n,), generator=gen), torch.randint(0, h, (n,), generator=gen)], 1)
    return torch.cat([border, rand])


def reference_cosines(src, tgt, pts, src_size, tgt_size) -> torch.Tensor:  # [N, Ht*Wt]
    """The reference's full cosine matrix, materialised (test oracle)."""
    (ws, hs), (wt, ht) = src_size, tgt_size
    src_up = F.interpolate(src[None], size=(hs, ws), mode="bilinear", align_corners=False)[0]
    tgt_up = F.interpolate(tgt[None], size=(ht, wt), mode="bilinear", align_corners=False)[0]
    q = F.normalize(src_up[:, pts[:, 1], pts[:, 0]].T, dim=1)
    return q @ F.normalize(tgt_up.flatten(1), dim=0)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


@pytest.mark.parametrize(("n_in", "n_out"), [(48, 500), (48, 375), (13, 101), (7, 7), (10, 5), (1, 9), (9, 1)])
def test_linear_weights_reproduce_interpolate(n_in, n_out):
    x = torch.randn(5, n_in, dtype=torch.float32)
    want = F.interpolate(x[None, :, None, :], size=(1, n_out), mode="bilinear", align_corners=False)[0, :, 0]
    i0, l0, l1 = _linear_weights(n_in, n_out, x.device)
    xp = torch.cat([x, x[:, -1:]], 1)
    got = l0 * xp[:, i0] + l1 * xp[:, i0 + 1]
    # Same weights; the kernel may fuse the multiply-add, so allow one float32 ulp of the values (|x| < 6).
    torch.testing.assert_close(got, want, rtol=0, atol=6e-7)


@pytest.mark.parametrize("kind", sorted(MAPS))
@pytest.mark.parametrize(("hw", "size"), [((11, 9), (71, 103)), ((6, 5), (6, 5)), ((12, 10), (7, 9)), ((1, 6), (13, 4))])
def test_upsampled_norms_match_materialised_map(kind, hw, size):
    gen = torch.Generator().manual_seed(3)
    feat = MAPS[kind](40, *hw, gen)
    up = F.interpolate(feat[None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]
    want = 1 / up.double().norm(dim=0)
    got = _upsampled_inverse_norms(feat, size).double()
    # float32 Gram products (relative error ~1e-7) against a float64 norm of the float32 upsampled map.
    torch.testing.assert_close(got, want, rtol=2e-6, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Point transfer


def transfer_case(kind: str, case: tuple, seed: int) -> tuple:
    c, src_hw, src_size, tgt_hw, tgt_size = case
    gen = torch.Generator().manual_seed(seed)
    src, tgt = MAPS[kind](c, *src_hw, gen), MAPS[kind](c, *tgt_hw, gen)
    if kind != "random":  # transfer between related maps, as in real use: the target is a perturbed source
        tgt = F.interpolate(src[None], size=tgt_hw, mode="bilinear", align_corners=False)[0]
        tgt = tgt + 0.02 * torch.randn(tgt.shape, generator=gen)
    pts = query_points(src_size, 1000, gen)
    ref_xy, ref_cos = match_points_reference(src, tgt, pts, src_size, tgt_size)
    xy, cos = match_points(src, tgt, pts, src_size, tgt_size)
    assert xy.dtype == torch.long and xy.shape == (len(pts), 2) and cos.shape == (len(pts),)
    # float32 rounding of two different but exact formulas: a few 1e-7 on cosines in [-1, 1].
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-5)
    same = (xy == ref_xy).all(1)
    if not same.all():  # every disagreement must be a tie within the reference's own rounding
        full = reference_cosines(src, tgt, pts[~same], src_size, tgt_size)
        at_ours = full.gather(1, (xy[~same, 1] * tgt_size[0] + xy[~same, 0])[:, None])[:, 0]
        assert torch.all(ref_cos[~same] - at_ours <= NEAR_TIE), (ref_cos[~same] - at_ours).max()
    return same


@pytest.mark.parametrize("kind", sorted(MAPS))
def test_match_points_equals_reference(kind):
    same = torch.cat([transfer_case(kind, case, 10 + i) for i, case in enumerate(CASES)])
    assert same.float().mean() >= 0.999, f"{int((~same).sum())} of {len(same)} argmax differ"


@pytest.mark.parametrize("kind", sorted(MAPS))
@pytest.mark.parametrize("case", range(len(DEGENERATE)))
def test_match_points_degenerate_geometry_differs_only_on_exact_ties(kind, case):
    transfer_case(kind, DEGENERATE[case], 20 + case)


def test_match_points_chunking_and_dtypes_do_not_change_answers():
    gen = torch.Generator().manual_seed(5)
    src, tgt = random_map(16, 9, 11, gen), random_map(16, 10, 8, gen)
    pts = query_points((45, 41), 60, gen)
    xy, cos = match_points(src, tgt, pts, (45, 41), (37, 53))
    xy7, cos7 = match_points(src, tgt, pts, (45, 41), (37, 53), chunk=7)
    assert torch.equal(xy, xy7) and torch.equal(cos, cos7)
    xy_b, _ = match_points(src[None].double(), tgt[None].double(), pts.double(), (45, 41), (37, 53))
    assert torch.equal(xy, xy_b)  # [1, C, h, w] inputs, float64 maps and float points are accepted


def near_tie_pair(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A target map whose cells are all one vector up to 1e-6 relative noise, and a source map holding that vector
    at cell (3, 3): every target pixel's cosine with the query is within float32 rounding of the others, so the
    argmax is decided by rounding alone. Returns (src [C, 8, 8], tgt [C, 12, 12], query pixels [5, 2])."""
    c = 256
    base = torch.randn(c, generator=gen)
    tgt = base[:, None, None] * (1 + 1e-6 * torch.randn(1, 12, 12, generator=gen)) + 1e-6 * torch.randn(
        c, 12, 12, generator=gen)
    src = torch.randn(c, 8, 8, generator=gen)
    src[:, 3, 3] = base
    src[:, 4, 5] = base * (1 + 1e-6 * torch.randn(c, generator=gen))
    return src, tgt, torch.tensor([[42, 42], [43, 41], [65, 53], [64, 54], [60, 50]])


@pytest.mark.parametrize("threads", [1, 2])
def test_match_points_answer_for_a_point_does_not_depend_on_the_others(threads):
    """At float32 near-ties a point alone and the same point among many others get the same target and score."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(11)
        src, tgt, queries = near_tie_pair(gen)
        size = (96, 96)
        others = torch.randint(0, 96, (40, 2), generator=gen)
        for q in queries:
            alone_xy, alone_cos = match_points(src, tgt, q[None], size, size)
            for pos, count in ((0, 1), (0, 2), (7, 16), (16, 17), (39, 40)):
                pts = torch.cat([others[:pos], q[None], others[pos:count]])
                for chunk in (None, 1, 5):
                    xy, cos = match_points(src, tgt, pts, size, size, chunk=chunk)
                    assert torch.equal(xy[pos], alone_xy[0]), (q.tolist(), pos, count, chunk)
                    assert torch.equal(cos[pos], alone_cos[0]), (q.tolist(), pos, count, chunk)
            many_xy, _ = match_points(src, tgt, pts, size, size, top_k=3)
            top_xy, _ = match_points(src, tgt, q[None], size, size, top_k=3)
            assert torch.equal(many_xy[pos], top_xy[0])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [
    [[float("nan"), 3.0]], [[1.0, float("inf")]], [[1e30, 2.0]], [[-1e30, 2.0]], [[10**20, 2]], [[2**62, 0]],
    [[1, 2, 3]], [[True, False]], [[[1, 2]]], [["a", "b"]], [[1, 2], [3]],
])
def test_every_point_entry_point_refuses_bad_points_clearly(bad):
    from dift_fast.pair import ImageFeatures, match_pair

    gen = torch.Generator().manual_seed(1)
    src, tgt = random_map(8, 6, 7, gen), random_map(8, 6, 7, gen)
    with pytest.raises(ValueError, match=r"src_points|outside|not finite|must be"):
        match_points(src, tgt, bad, (56, 48), (56, 48))
    with pytest.raises(ValueError, match=r"src_points|outside|not finite|must be"):
        match_points_reference(src, tgt, bad, (56, 48), (56, 48))
    with pytest.raises(ValueError, match=r"points|outside|not finite|must be"):
        sample_descriptors(src, bad, (56, 48))
    f0, f1 = ImageFeatures(src, "a", (56, 48)), ImageFeatures(tgt, "b", (56, 48))
    with pytest.raises(ValueError, match=r"points0|outside|not finite|must be"):
        match_pair(None, f0, f1, points0=bad)


def test_huge_point_names_its_value_not_a_wrapped_integer():
    gen = torch.Generator().manual_seed(2)
    src, tgt = random_map(8, 6, 7, gen), random_map(8, 6, 7, gen)
    with pytest.raises(ValueError, match=r"src_points\[1\] = \(1e\+30, 2\) is outside the 56x48 image"):
        match_points(src, tgt, [[1.0, 2.0], [1e30, 2.0]], (56, 48), (56, 48))
    with pytest.raises(ValueError, match=r"points\[0\] = \(-5, 2\) is outside the 56x48 image"):
        sample_descriptors(src, [[-5.0, 2.0]], (56, 48))
    sample_descriptors(src, [[-0.5, -0.5], [55.5, 47.5]], (56, 48))  # hloc's pixel-centre range is accepted


def test_match_points_top_k_matches_sorted_reference():
    gen = torch.Generator().manual_seed(6)
    src, tgt = random_map(24, 9, 11, gen), random_map(24, 10, 8, gen)
    src_size, tgt_size = (45, 41), (37, 53)
    pts = query_points(src_size, 100, gen)
    xy, cos = match_points(src, tgt, pts, src_size, tgt_size, top_k=5)
    assert xy.shape == (len(pts), 5, 2) and cos.shape == (len(pts), 5)
    full = reference_cosines(src, tgt, pts, src_size, tgt_size)
    vals = torch.sort(full, dim=1, descending=True, stable=True).values[:, :5]
    torch.testing.assert_close(cos, vals, rtol=0, atol=1e-5)
    assert torch.all(cos[:, :-1] >= cos[:, 1:])
    # Neighbours of the maximum are near-ties; ours are a valid top 5 of the reference's cosines up to rounding.
    at_ours = full.gather(1, xy[..., 1] * tgt_size[0] + xy[..., 0])
    assert torch.all((at_ours - vals).abs() <= NEAR_TIE)
    assert len(torch.unique(xy[0], dim=0)) == 5
    top1, _ = match_points(src, tgt, pts, src_size, tgt_size)
    assert torch.equal(top1, xy[:, 0])


def test_top_k_breaks_exact_ties_by_row_major_order():
    # A constant map: every target pixel has cosine 1, so the k best are the first k pixels in row-major order.
    feat = torch.ones(4, 3, 3)
    xy, cos = match_points(feat, feat, [[1, 1]], (6, 6), (5, 4), top_k=7)
    want = torch.tensor([[x, y] for y in range(4) for x in range(5)][:7])
    assert torch.equal(xy[0], want)
    torch.testing.assert_close(cos[0], torch.ones(7))


def test_cosine_maps_is_what_match_points_maximises():
    gen = torch.Generator().manual_seed(8)
    src, tgt = random_map(8, 5, 6, gen), random_map(8, 7, 4, gen)
    pts = torch.tensor([[0, 0], [10, 3], [29, 19]])
    maps = cosine_maps(src, tgt, pts, (30, 20), (16, 28))
    assert maps.shape == (3, 28, 16)
    full = reference_cosines(src, tgt, pts, (30, 20), (16, 28)).view(3, 28, 16)
    torch.testing.assert_close(maps, full, rtol=0, atol=1e-5)


def test_match_points_bad_inputs():
    feat = torch.randn(8, 4, 4)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        match_points(feat, torch.randn(9, 4, 4), [[0, 0]], (16, 16), (16, 16))
    with pytest.raises(ValueError, match=r"outside the 16x12 image"):
        match_points(feat, feat, [[3, 12]], (16, 12), (16, 16))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        match_points(feat, feat, [1, 2, 3], (16, 12), (16, 16))
    with pytest.raises(ValueError, match="top_k"):
        match_points(feat, feat, [[0, 0]], (16, 16), (3, 3), top_k=10)
    with pytest.raises(ValueError, match="tgt_size"):
        match_points(feat, feat, [[0, 0]], (16, 16), (0, 3))
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        match_points(torch.randn(8, 4), feat, [[0, 0]], (16, 16), (16, 16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_match_points_cuda_equals_cuda_reference():
    gen = torch.Generator().manual_seed(9)
    src, tgt = random_map(64, 13, 17, gen).cuda(), random_map(64, 11, 9, gen).cuda()
    pts = query_points((131, 97), 1000, gen).cuda()
    ref_xy, ref_cos = match_points_reference(src, tgt, pts, (131, 97), (71, 103))
    xy, cos = match_points(src, tgt, pts, (131, 97), (71, 103))
    assert xy.is_cuda and (xy == ref_xy).all(1).float().mean() >= 0.999
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Descriptors at keypoints


def test_sample_descriptors_aligned_equals_upsampled_map_at_pixels():
    gen = torch.Generator().manual_seed(11)
    feat = random_map(12, 7, 9, gen)
    size = (53, 38)
    up = F.interpolate(feat[None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]
    pts = query_points(size, 50, gen)
    got = sample_descriptors(feat, pts.float(), size, convention="aligned")
    torch.testing.assert_close(got, up[:, pts[:, 1], pts[:, 0]].T, rtol=0, atol=1e-5)


def test_sample_descriptors_reference_convention_is_half_a_cell_off():
    gen = torch.Generator().manual_seed(12)
    feat = random_map(6, 5, 7, gen)
    size = (56, 40)
    corners = torch.tensor([[0.0, 0.0], [55.0, 39.0]])
    got = sample_descriptors(feat, corners, size)  # default: the reference's convention
    # g = ±1 lands half a cell outside the map: bilinear with the zero padding gives a quarter of the corner.
    torch.testing.assert_close(got, 0.25 * torch.stack([feat[:, 0, 0], feat[:, -1, -1]]), rtol=0, atol=1e-6)
    centre = sample_descriptors(feat, torch.tensor([[27.5, 19.5]]), size)  # g = 0: the map's centre
    torch.testing.assert_close(centre[0], feat[:, 2, 3], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="convention"):
        sample_descriptors(feat, corners, size, convention="pixel")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Mutual nearest neighbours


def numpy_mnn(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """Plain definition: i matches j when j is i's best and i is j's best (cosine)."""
    d0 = d0 / np.linalg.norm(d0, axis=1, keepdims=True)
    d1 = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    sim = d0 @ d1.T
    j = sim.argmax(1)
    return np.where(sim.argmax(0)[j] == np.arange(len(d0)), j, -1)


BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss missing"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mnn_matches_definition(backend):
    gen = torch.Generator().manual_seed(13)
    d0 = torch.randn(300, 32, generator=gen)
    d1 = torch.cat([d0[:200] + 0.3 * torch.randn(200, 32, generator=gen), torch.randn(150, 32, generator=gen)])
    m0, s0 = mutual_nearest_neighbors(d0, d1, backend=backend)
    assert m0.dtype == torch.long and m0.shape == (300,) and s0.shape == (300,)
    np.testing.assert_array_equal(m0.numpy(), numpy_mnn(d0.numpy(), d1.numpy()))
    ok = m0 >= 0
    assert ok.sum() > 150  # the perturbed copies mostly find each other
    want = (F.normalize(d0[ok], dim=1) * F.normalize(d1[m0[ok]], dim=1)).sum(1)
    torch.testing.assert_close(s0[ok], want, rtol=0, atol=1e-5)
    assert torch.all(s0[~ok] == 0)


@pytest.mark.skipif(not faiss_available(), reason="faiss missing")
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize(("min_score", "ratio"), [(None, None), (None, 0.9), ("median", None)])
def test_mnn_faiss_and_torch_agree(metric, min_score, ratio):
    gen = torch.Generator().manual_seed(14)
    d0 = torch.randn(400, 48, generator=gen)
    d1 = torch.cat([d0[:250] + 0.5 * torch.randn(250, 48, generator=gen), torch.randn(200, 48, generator=gen)])
    if min_score == "median":  # halfway between two match scores, so rounding cannot flip the filter
        m, s = mutual_nearest_neighbors(d0, d1, metric=metric, backend="torch")
        kept = s[m >= 0].sort().values
        min_score = float(kept[len(kept) // 2 : len(kept) // 2 + 2].mean())
    kw = {"metric": metric, "min_score": min_score, "ratio": ratio}
    m_t, s_t = mutual_nearest_neighbors(d0, d1, backend="torch", **kw)
    m_f, s_f = mutual_nearest_neighbors(d0, d1, backend="faiss", **kw)
    assert torch.equal(m_t, m_f)
    assert 0 < int((m_t >= 0).sum()) < 400  # the filter (if any) kept some and dropped some
    ok = m_t >= 0
    torch.testing.assert_close(s_t[ok], s_f[ok], rtol=1e-5, atol=1e-5)


def test_mnn_thresholds_filter_monotonically():
    gen = torch.Generator().manual_seed(15)
    d0, d1 = torch.randn(200, 16, generator=gen), torch.randn(220, 16, generator=gen)
    base, s = mutual_nearest_neighbors(d0, d1, backend="torch")
    threshold = float(s[base >= 0].median())
    strict, s2 = mutual_nearest_neighbors(d0, d1, backend="torch", min_score=threshold)
    ratio, _ = mutual_nearest_neighbors(d0, d1, backend="torch", ratio=0.8)
    assert torch.all((strict >= 0) <= (base >= 0)) and torch.all(s2[strict >= 0] >= threshold)
    assert int((strict >= 0).sum()) < int((base >= 0).sum())
    assert torch.all((ratio >= 0) <= (base >= 0)) and int((ratio >= 0).sum()) < int((base >= 0).sum())


def test_mnn_bad_and_empty_inputs():
    with pytest.raises(ValueError, match="descriptor dimensions differ"):
        mutual_nearest_neighbors(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="metric"):
        mutual_nearest_neighbors(torch.randn(3, 4), torch.randn(3, 4), metric="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        mutual_nearest_neighbors(torch.randn(3, 4), torch.randn(3, 4), backend="annoy")  # type: ignore[arg-type]
    m0, s0 = mutual_nearest_neighbors(torch.randn(3, 4), torch.randn(0, 4))
    assert torch.equal(m0, torch.full((3,), -1)) and s0.shape == (3,)


def test_dense_mnn_between_shifted_maps_recovers_the_shift():
    gen = torch.Generator().manual_seed(16)
    big = torch.randn(32, 10, 14, generator=gen)
    feat0, feat1 = big[:, :, :12], big[:, :, 2:]  # map 1 is map 0 shifted left by 2 cells
    pts0, pts1, scores = dense_mutual_nearest_neighbors(feat0, feat1, backend="torch")
    overlap = pts0[:, 0] >= 2  # cells 0..1 of map 0 have no twin; they may still pair up by chance
    assert int(overlap.sum()) == 10 * 10  # every cell of the overlap matches its twin
    torch.testing.assert_close(pts0[overlap] - pts1[overlap], torch.tensor([2.0, 0.0]).expand(100, 2))
    torch.testing.assert_close(scores[overlap], torch.ones(100), rtol=0, atol=1e-5)
    assert torch.all(scores[~overlap] < 0.9)
    px0, _, _ = dense_mutual_nearest_neighbors(feat0, feat1, size0=(192, 160), size1=(192, 160), backend="torch")
    torch.testing.assert_close(px0, (pts0 + 0.5) * 16 - 0.5)  # cell centres in pixels, stride 16


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpu_count() == 0 or not torch.cuda.is_available(), reason="needs faiss with GPU support")
def test_mnn_faiss_gpu_agrees_with_torch():
    gen = torch.Generator().manual_seed(17)
    d0 = torch.randn(500, 64, generator=gen)
    d1 = torch.cat([d0[:300] + 0.4 * torch.randn(300, 64, generator=gen), torch.randn(100, 64, generator=gen)])
    m_t, s_t = mutual_nearest_neighbors(d0, d1, backend="torch")
    m_g, s_g = mutual_nearest_neighbors(d0.cuda(), d1.cuda(), backend="faiss")
    assert m_g.is_cuda and torch.equal(m_g.cpu(), m_t)
    torch.testing.assert_close(s_g.cpu(), s_t, rtol=1e-5, atol=1e-5)
