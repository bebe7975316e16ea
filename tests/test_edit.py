"""Edit propagation: a known homography recovered from features that encode it, failures per target, alpha."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from edit_helpers import HomographyCodedExtractor, apply_homography
from PIL import Image

from dift_fast import propagate_edit
from dift_fast.cli import main
from dift_fast.edit import EditPropagationWarning, composite_edit, load_edit, sample_edit_points, transfer_edit
from dift_fast.matching import match_points

cv2 = pytest.importorskip("cv2", reason="edit propagation needs OpenCV (the eval extra)")

# Source pixels -> target pixels: scale, shear, a little perspective; the sticker lands well inside the target.
H_TRUE = np.array([[0.9, 0.12, 20.0], [-0.06, 0.95, 12.0], [2e-4, 3e-4, 1.0]])
STICKER = (40, 30, 88, 66)  # x0, y0, x1, y1 (exclusive) of the opaque sticker in the 128x96 source


def texture(seed: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def sticker_edit(width: int = 128, height: int = 96) -> np.ndarray:
    """Opaque red sticker with a half-transparent blue border; elsewhere alpha 0 under bright green (garbage)."""
    edit = np.zeros((height, width, 4), dtype=np.uint8)
    edit[..., 1] = 255  # colour under alpha 0 must never show
    x0, y0, x1, y1 = STICKER
    edit[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = (0, 0, 255, 128)
    edit[y0:y1, x0:x1] = (255, 0, 0, 255)
    return edit


@pytest.fixture(params=[None, (96, 72)], ids=["original-size", "resized-96x72"])
def scene(request):
    """Source 128x96, a target 160x120 whose features show the source through H_TRUE, and a stand-in extractor.

    Extracted at the images' own sizes, or both resized to 96x72 (each by its own factor) as config.image_size
    does it: points and the homography stay in original pixels either way.
    """
    extractor = HomographyCodedExtractor(stride=8, length=24.0, image_size=request.param)
    source, target = texture(1, 128, 96), texture(2, 160, 120)
    extractor.register(source, np.eye(3))
    extractor.register(target, H_TRUE)
    return extractor, source, target


def test_known_homography_is_recovered(scene):
    extractor, source, target = scene
    edit = sticker_edit()
    (result,) = transfer_edit(extractor, source, edit, [target])
    assert result.image is not None and result.image.size == (160, 120) and result.image.mode == "RGB"
    # Every nearest neighbour is where H_TRUE sends the point, rounded to the target's pixel grid (the stand-in's
    # matches are within 0.71 px = half a pixel diagonal), so RANSAC (5 px) keeps them all and its least-squares
    # refit over 1000 pairs averages the rounding away: the sticker's corners land within 0.5 px of H_TRUE's.
    # (Inliers count once per target pixel: H_TRUE shrinks the sticker a little, so of 1000 sampled source pixels
    # about a tenth round onto a target pixel another one already holds.)
    assert result.points == 1000 and result.inliers >= 850
    x0, y0, x1, y1 = STICKER
    corners = np.array([[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]], dtype=np.float64)
    err = np.hypot(*(apply_homography(result.homography, corners) - apply_homography(H_TRUE, corners)).T)
    assert err.max() < 0.5, err
    # The picture: the same as compositing with the true homography, except along the sticker's edges where a
    # sub-pixel shift changes the bilinear blend (at most ~half the colour step; a band of edge pixels).
    expected = composite_edit(target, edit, H_TRUE)
    diff = np.abs(np.asarray(result.image).astype(int) - expected.astype(int)).max(axis=2)
    assert (diff > 2).mean() < 0.02 and diff.max() < 160
    # Away from the edit the target is untouched; inside the sticker it is the sticker's red.
    inside = apply_homography(H_TRUE, np.array([[64.0, 48.0]]))[0].round().astype(int)
    assert tuple(np.asarray(result.image)[inside[1], inside[0]]) == (255, 0, 0)
    assert (np.asarray(result.image)[:5, :5] == target[:5, :5]).all()


def test_too_few_inliers_fails_alone(scene, tmp_path):
    extractor, source, target = scene
    unrelated = texture(3, 96, 96)  # not registered: random features, no correspondence
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(EditPropagationWarning) as caught:
        out = propagate_edit(extractor, source, sticker_edit(), [unrelated, target, str(broken)])
    assert out[0] is None and out[2] is None and isinstance(out[1], Image.Image)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "RANSAC inliers among 1000 point pairs (need 100;" in messages[0]
    assert "broken.png" in messages[1]
    results = transfer_edit(extractor, source, sticker_edit(), [unrelated])
    assert results[0].inliers < 100 and results[0].image is None and results[0].name == "<ndarray>"
    # Why inliers count once per target pixel: random (upsampled) feature maps send most points to a few "hub"
    # pixels, and RANSAC fits a homography collapsing the edit onto them; counted per pair it would pass.
    src_points = sample_edit_points(sticker_edit()[..., 3])
    src_feat = extractor.features(128, 96, np.eye(3))
    matched, _ = match_points(src_feat, extractor.features(96, 96, None), torch.from_numpy(src_points), (128, 96),
                              (96, 96))
    _, mask = cv2.findHomography(src_points.astype(float), matched.numpy().astype(float), cv2.RANSAC, 5.0)
    assert mask.sum() > 200 and len(np.unique(matched.numpy()[mask.ravel() > 0], axis=0)) < 50


def test_edit_input_errors(scene, tmp_path):
    extractor, source, target = scene
    with pytest.raises(ValueError, match=r"edit <ndarray> is 64x48 but the source image is 128x96"):
        transfer_edit(extractor, source, sticker_edit(64, 48), [target])
    rgb = tmp_path / "rgb.png"
    Image.fromarray(source).save(rgb)
    with pytest.raises(ValueError, match="has no alpha channel"):
        transfer_edit(extractor, source, str(rgb), [target])
    with pytest.raises(ValueError, match="fully transparent"):
        transfer_edit(extractor, source, np.zeros((96, 128, 4), dtype=np.uint8), [target])
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 4\]"):
        load_edit(np.zeros((96, 128, 3), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_edit(tmp_path / "missing.png")
    assert extractor.calls == 0  # nothing was extracted for a bad edit


def test_load_edit_accepts_png_and_palette_transparency(tmp_path):
    edit = sticker_edit()
    Image.fromarray(edit, "RGBA").save(tmp_path / "edit.png")
    assert (load_edit(tmp_path / "edit.png", (128, 96)) == edit).all()
    pal = Image.new("P", (4, 3), 0)
    pal.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    rgba = load_edit(pal)
    assert rgba[1, 1].tolist() == [255, 0, 0, 255] and rgba[0, 0, 3] == 0


def test_sample_edit_points():
    alpha = np.zeros((10, 20), dtype=np.uint8)
    alpha[2:4, 5:8] = 1
    pts = sample_edit_points(alpha, n_points=100)
    assert sorted(map(tuple, pts.tolist())) == [(x, y) for x in range(5, 8) for y in range(2, 4)]
    alpha[:] = 255
    a, b = sample_edit_points(alpha, 50, seed=3), sample_edit_points(alpha, 50, seed=3)
    assert len(a) == 50 and len({tuple(p) for p in a.tolist()}) == 50 and (a == b).all()
    with pytest.raises(ValueError, match="n_points"):
        sample_edit_points(alpha, 3)


def test_composite_alpha_by_hand():
    target = np.zeros((1, 2, 3), dtype=np.uint8)
    target[:] = (0, 0, 200)
    edit = np.array([[[200, 100, 0, 128], [255, 255, 255, 0]]], dtype=np.uint8)
    out = composite_edit(target, edit, np.eye(3))
    # alpha 128/255 = 0.502: R 200 * 0.502 = 100.4, G 100 * 0.502 = 50.2, B 200 * (1 - 0.502) = 99.6
    assert out[0, 0].tolist() == [100, 50, 100]
    assert out[0, 1].tolist() == [0, 0, 200]  # alpha 0: the target, whatever colour the edit holds there


def test_transparent_colour_never_bleeds_through_the_warp():
    target = np.zeros((20, 20, 3), dtype=np.uint8)
    edit = np.zeros((20, 20, 4), dtype=np.uint8)
    edit[..., 1] = 255  # green under alpha 0
    edit[5:15, 5:15] = (255, 0, 0, 255)
    half_pixel = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    out = composite_edit(target, edit, half_pixel)
    # The bilinear warp blends the sticker's edge with its transparent surroundings. Warping premultiplied colour
    # blends red with (0, 0, 0, 0); a straight-alpha warp would blend in the green and show ~64 of it.
    assert out[..., 1].max() == 0
    assert 0 < out[5, 10, 0] < 255 and out[10, 10, 0] == 255  # a half-covered edge pixel, an inner pixel


def test_propagate_edit_onto_itself_with_the_tiny_model(tiny_extractor_factory):
    # The real extractor end to end. Random weights make matches meaningless across images, but an image against
    # itself matches each point to itself (identical feature maps), so the fit is the identity and the result is
    # the source with the edit composited in place.
    extractor = tiny_extractor_factory(ensemble_size=1, image_size=None)
    source = texture(5, 128, 96)
    edit = sticker_edit()
    (out,) = propagate_edit(extractor, source, edit, [source], n_points=200)
    expected = composite_edit(source, edit, np.eye(3))
    assert out is not None
    diff = np.abs(np.asarray(out).astype(int) - expected.astype(int)).max(axis=2)
    assert (diff > 2).mean() < 0.01


def test_cli_edit(tiny_model_dir, tmp_path, capsys):
    source = texture(5, 128, 96)
    Image.fromarray(source).save(tmp_path / "a.png")
    Image.fromarray(sticker_edit(), "RGBA").save(tmp_path / "edit.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["edit", str(tmp_path / "a.png"), str(tmp_path / "edit.png"), str(tmp_path / "a.png"),
            str(tmp_path / "broken.jpg"), "--out", str(out), "--model", str(tiny_model_dir), "--image-size", "128x96",
            "--ensemble-size", "1", "--device", "cpu", "--points", "200"]
    assert main(args) == 1  # one target got no edit
    captured = capsys.readouterr()
    assert "broken.jpg: no edit" in captured.err and "meaningless" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a_edit.png"]
    written = np.asarray(Image.open(out / "a_edit.png"))
    assert written.shape == (96, 128, 3) and (written[40, 60] == (255, 0, 0)).all()
    # a mismatched edit fails before the model is loaded
    Image.fromarray(sticker_edit(64, 48), "RGBA").save(tmp_path / "small.png")
    assert main(["edit", str(tmp_path / "a.png"), str(tmp_path / "small.png"), str(tmp_path / "a.png"),
                 "--out", str(out), "--model", "/nonexistent/model"]) == 2
    assert "64x48 but the source image is 128x96" in capsys.readouterr().err


def test_output_names():
    from dift_fast.cli.edit import output_names

    assert output_names(["a/x.jpg", "b/x.png", "y.jpg", "c/x.jpg"]) == ["x_edit.png", "x_edit-2.png", "y_edit.png",
                                                                        "x_edit-3.png"]


def test_no_warnings_when_all_succeed(scene):
    extractor, source, target = scene
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditPropagationWarning)
        assert propagate_edit(extractor, source, sticker_edit(), [target])[0] is not None
    assert torch.is_tensor(extractor.features(16, 16, None))


def test_degenerate_fits_are_refused():
    from dift_fast.edit import _degenerate

    box = np.array([[10, 10], [49, 29]])  # spans a 40 x 20 px box (pixel edges 9.5 .. 49.5, 9.5 .. 29.5)
    assert _degenerate(np.eye(3), box) is None
    mirror = np.array([[-1.0, 0, 100], [0, 1, 0], [0, 0, 1]])
    assert _degenerate(mirror, box) is None  # a mirrored target is fine (orientation may flip)
    # w = 1 - 0.03 x is negative for x > 33: the box's right part is behind the horizon
    assert "horizon" in _degenerate(np.array([[1.0, 0, 0], [0, 1, 0], [-0.03, 0, 1]]), box)
    assert "area by 400" in _degenerate(np.diag([20.0, 20.0, 1.0]), box)  # 20 x 20 = 400 > 100
    assert "area by 0.0025" in _degenerate(np.diag([0.05, 0.05, 1.0]), box)
