"""match_pair: one call for a pair, LightGlue's output layout, point transfer, sizes travelling with features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dift_fast
from dift_fast.images import ImageError
from dift_fast.matching import dense_mutual_nearest_neighbors, match_points_reference
from dift_fast.matching.cells import cell_centers
from dift_fast.pair import ImageFeatures, extract_features, match_pair, unbatch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CAT, TURNED = str(EXAMPLES / "cat.jpg"), str(EXAMPLES / "cat_turned.jpg")


def cosine_matrix(f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:  # [h0*w0, h1*w1], the test's own oracle
    return F.normalize(f0.flatten(1).T.double(), dim=1) @ F.normalize(f1.flatten(1).T.double(), dim=1).T


def test_cell_centers_are_pixel_centres_of_each_cell():
    # A 4-wide map over a 64-pixel-wide image: cells of 16 pixels, the first covers pixels 0..15, centre 7.5.
    xy = cell_centers(3, 4, (64, 30))
    assert xy.shape == (12, 2)
    assert xy[:4, 0].tolist() == [7.5, 23.5, 39.5, 55.5]
    assert xy[::4, 1].tolist() == [4.5, 14.5, 24.5]  # rows of 10 pixels
    assert xy[5].tolist() == [23.5, 14.5]  # row-major: cell (1, 1)


def test_dense_matches_follow_a_known_shift():
    # Image 1's map is image 0's shifted right by one cell: cell (i, j) of image 0 must match (i, j + 1).
    torch.manual_seed(0)
    f0 = torch.randn(16, 5, 6)
    f1 = torch.randn(16, 5, 6)
    f1[:, :, 1:] = f0[:, :, :-1]
    a, b = ImageFeatures(f0, "a", (60, 50)), ImageFeatures(f1, "b", (60, 50))
    out = match_pair(None, a, b)
    m = out["matches"]
    shift = out["keypoints1"][m[:, 1]] - out["keypoints0"][m[:, 0]]
    inner = out["keypoints0"][m[:, 0]][:, 0] < 50  # the last column has no shifted twin
    assert int(inner.sum()) == 25  # every cell with a twin is matched to it
    assert torch.equal(shift[inner], torch.tensor([[10.0, 0.0]]).expand(25, 2))  # one 10-pixel cell to the right
    assert torch.allclose(out["scores"][inner], torch.ones(25))


@pytest.fixture(scope="module")
def pair_features(tiny_extractor_factory):
    extractor = tiny_extractor_factory()
    return extractor, extract_features(extractor, [CAT, TURNED])


def test_dense_output_is_lightglue_shaped_and_mutual(pair_features):
    extractor, (f0, f1) = pair_features
    out = match_pair(extractor, f0, f1)
    n0, n1 = f0.features[0].numel(), f1.features[0].numel()
    assert out["keypoints0"].shape == (n0, 2) and out["keypoints1"].shape == (n1, 2)
    m, s = out["matches"], out["scores"]
    assert m.dtype == torch.long and m.ndim == 2 and m.shape[1] == 2 and s.shape == (len(m),)
    assert torch.equal(m[:, 0], m[:, 0].sort().values)  # ordered by the first index, as torch.where gives them
    cos = cosine_matrix(f0.features, f1.features)
    best1, best0 = cos.argmax(1), cos.argmax(0)
    mutual = [[i, int(best1[i])] for i in range(n0) if int(best0[best1[i]]) == i]
    assert m.tolist() == mutual
    assert torch.allclose(s.double(), cos[m[:, 0], m[:, 1]], atol=1e-5)  # float32 cosine vs float64 oracle
    # hloc's per-keypoint form says the same thing
    m0 = out["matches0"]
    assert m0.shape == (n0,) and torch.equal(torch.where(m0 > -1)[0], m[:, 0]) and torch.equal(m0[m[:, 0]], m[:, 1])
    # and the keypoints are what the existing dense matcher reports in image pixels
    p0, p1, _ = dense_mutual_nearest_neighbors(f0.features, f1.features, size0=f0.original_size, size1=f1.original_size)
    assert torch.allclose(out["keypoints0"][m[:, 0]], p0) and torch.allclose(out["keypoints1"][m[:, 1]], p1)
    assert out["image_size0"].tolist() == list(f0.original_size)


def test_dense_non_mutual_and_min_score(pair_features):
    extractor, (f0, f1) = pair_features
    cos = cosine_matrix(f0.features, f1.features)
    out = match_pair(extractor, f0, f1, mutual=False)
    assert out["matches"][:, 1].tolist() == cos.argmax(1).tolist()  # every cell gets its nearest neighbour
    threshold = float(cos.max(1).values.median())
    strict = match_pair(extractor, f0, f1, mutual=False, min_score=threshold)
    assert len(strict["matches"]) == int((cos.max(1).values >= threshold).sum())
    assert (strict["scores"] >= threshold).all()


def test_point_transfer_matches_the_reference(pair_features):
    extractor, (f0, f1) = pair_features
    pts = [[3, 4], [200, 150], [f0.original_size[0] - 1, f0.original_size[1] - 1]]
    out = match_pair(extractor, f0, f1, points0=pts)
    ref_pts, ref_scores = match_points_reference(f0.features, f1.features, pts, f0.original_size, f1.original_size)
    assert torch.equal(out["points0"], torch.tensor(pts))
    assert torch.equal(out["points1"], ref_pts)
    assert torch.allclose(out["scores"], ref_scores, atol=1e-5)  # fast exact path vs reference, float32 rounding
    # the cycle check: transferring back must land within one feature cell
    back, _ = match_points_reference(f1.features, f0.features, ref_pts, f1.original_size, f0.original_size)
    cw, ch = f0.original_size[0] / f0.features.shape[2], f0.original_size[1] / f0.features.shape[1]
    expected = ((back[:, 0] - torch.tensor(pts)[:, 0]).abs() <= cw) & (
        (back[:, 1] - torch.tensor(pts)[:, 1]).abs() <= ch
    )
    assert torch.equal(out["valid"], expected)
    no_check = match_pair(extractor, f0, f1, points0=pts, mutual=False, min_score=float(ref_scores[1]))
    assert no_check["valid"].tolist() == (ref_scores >= ref_scores[1]).tolist()


def test_points_outside_the_image_are_refused(pair_features):
    extractor, (f0, f1) = pair_features
    with pytest.raises(ValueError, match=r"points0.*outside"):
        match_pair(extractor, f0, f1, points0=[[f0.original_size[0], 0]])


def test_match_pair_extracts_each_image_once_with_sizes(tiny_extractor_factory, monkeypatch):
    extractor = tiny_extractor_factory()
    calls = []
    original = extractor.extract_prepared

    def counting(prepared, *args, **kwargs):
        calls.append([p.name for p in prepared])
        return original(prepared, *args, **kwargs)

    monkeypatch.setattr(extractor, "extract_prepared", counting)
    out = match_pair(extractor, CAT, TURNED, points0=[[10, 10]])
    assert calls == [[CAT, TURNED]]  # one extraction call for both images
    with Image.open(TURNED) as im:
        assert (out["points1"][0] < torch.tensor(im.size)).all()  # in image 1's own (original) pixels
    # the features are those extract() gives, with names and sizes attached
    feats = original(extractor.prepare([CAT, TURNED])).features
    f0, _ = unbatch(original(extractor.prepare([CAT, TURNED])))
    assert torch.equal(f0.features, feats[0]) and f0.name == CAT
    with Image.open(CAT) as im:
        assert f0.original_size == im.size


def test_features_without_extractor_and_bad_inputs():
    with pytest.raises(ValueError, match="needs an extractor"):
        match_pair(None, CAT, ImageFeatures(torch.zeros(4, 2, 2), "x", (16, 16)))
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        ImageFeatures(torch.zeros(4, 2), "x", (16, 16))
    with pytest.raises(ValueError, match="original_size"):
        ImageFeatures(torch.zeros(4, 2, 2), "x", (0, 16))
    with pytest.raises(TypeError, match="FeatureBatch"):
        unbatch(torch.zeros(2, 4, 2, 2))


def test_load_image_is_public_and_names_bad_files(tmp_path):
    img = dift_fast.load_image(CAT)
    assert img.mode == "RGB" and img.size[0] > 0
    deep = tmp_path / "deep.png"
    Image.fromarray(np.arange(12 * 10, dtype=np.uint16).reshape(10, 12) * 500).save(deep)  # 16-bit grayscale
    assert dift_fast.load_image(deep).mode == "RGB"
    with pytest.raises(ImageError, match=r"missing\.jpg.*no such file"):
        dift_fast.load_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        dift_fast.load_image(tmp_path / "bad.jpg")
    with pytest.raises(TypeError, match="file path"):
        dift_fast.load_image(np.zeros((4, 4, 3), np.uint8))


def test_readme_python_api_example_runs(tiny_model_dir, tmp_path, monkeypatch):
    """The README's Python API block, on the tiny model: it extracts once and uses files that exist."""
    pytest.importorskip("matplotlib")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    call = 'from_pretrained(preset="spair")'
    assert call in block
    block = block.replace(
        call, f'from_pretrained({str(tiny_model_dir)!r}, image_size=(64, 48), ensemble_size=2, device="cpu")'
    )
    block = block.replace('"examples/', f'"{EXAMPLES}/')
    monkeypatch.chdir(tmp_path)
    calls = []
    original = dift_fast.DiftExtractor.extract_prepared

    def counting(self, prepared, *args, **kwargs):
        calls.append(len(prepared))
        return original(self, prepared, *args, **kwargs)

    monkeypatch.setattr(dift_fast.DiftExtractor, "extract_prepared", counting)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert calls == [2]  # both images extracted once, in one call
    assert namespace["cat"].original_size == (451, 300) and namespace["turned"].original_size == (411, 280)
    assert namespace["out"]["points1"].shape == (2, 2)
    assert len(namespace["points0"]) == len(namespace["points1"]) == len(namespace["m"]["scores"])
    assert (tmp_path / "dense.png").is_file()
