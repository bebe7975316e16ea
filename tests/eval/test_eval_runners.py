"""Benchmark runners end to end on the fixture datasets, with the tiny random model on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast import DiftConfig
from dift_fast.cli import main
from dift_fast.eval.features import FeatureCache
from dift_fast.eval.report import format_table, to_markdown, write_report
from dift_fast.eval.runners import run_davis, run_hpatches, run_pf_willow, run_spair
from dift_fast.eval.synthetic import grid_points, make_pairs
from dift_fast.extractor import FeatureBatch


@pytest.fixture
def extractor(tiny_extractor_factory):
    return tiny_extractor_factory(ensemble_size=1)  # E = 1: the tests are about the harness, not the ensemble


def test_spair_runner_and_cache_resume(extractor, spair_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache", extractor)
    report = run_spair(extractor, spair_root, cache, progress=False)
    # 3 images: the self-pair reuses its image, the pair without keypoints needs none and has no PCK.
    assert report.counts["images extracted"] == 3 and report.counts["pairs without keypoints"] == 1
    cats = report.details["per category"]
    assert cats["tvmonitor"]["pairs"] == 0 and cats["tvmonitor"]["per_image"] is None
    # "cat" maps an image onto itself: every keypoint must be found.
    assert cats["cat"]["per_point"] == 100.0 and cats["cat"]["keypoints"] == 4
    assert cats["dog"]["keypoints"] == 3  # border keypoints are matched too (clamped, never out of range)
    # pooled over the two pairs with keypoints: (1 + dog's per-pair PCK) / 2.
    assert report.metrics["PCK@0.1 per image"] == pytest.approx((100.0 + cats["dog"]["per_image"]) / 2)
    again = run_spair(extractor, spair_root, cache, progress=False)
    assert again.counts["images extracted"] == 0  # resumed from the cache
    assert again.metrics == report.metrics
    assert any("random weights" in n for n in report.notes)
    json_path, md_path = write_report(report, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["reported"]["PCK@0.1 per image"] == 52.9
    assert data["details"]["per category"]["tvmonitor"]["per_image"] is None
    assert "| PCK@0.1 per image | 52.90 |" in md_path.read_text()
    assert "52.90" in format_table(report) and "### per category" in to_markdown(report)


def test_pf_willow_runner(extractor, pf_willow_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache", extractor)
    report = run_pf_willow(extractor, pf_willow_root, cache, progress=False)
    assert report.counts == {"pairs": 2, "images extracted": 3}
    per_cat = report.details["per category, PCK@0.10"]
    assert per_cat["winebottle(wC)"]["per_point"] == 100.0  # an image against itself
    assert set(report.metrics) == {"PCK@0.05 per image", "PCK@0.05 per point", "PCK@0.10 per image",
                                   "PCK@0.10 per point"}


def test_hpatches_runner(tiny_extractor_factory, hpatches_root, tmp_path):
    extractor = tiny_extractor_factory(ensemble_size=1)
    root, kp_dir = hpatches_root
    cache = FeatureCache(tmp_path / "cache", extractor)
    report = run_hpatches(extractor, root, cache, keypoints=kp_dir, progress=False)
    assert report.counts["pairs"] == 10 and report.counts["illumination pairs"] == 5
    assert report.counts["images extracted"] == 2  # identical files share features: the base and its warp
    # i_fixture: six identical images with identical keypoints -> exact matches, identity homography, 100 %.
    assert report.metrics["illumination 1px"] == 100.0
    assert report.counts["viewpoint pairs"] == 5  # the viewpoint score itself: test_hpatches_runner_known_answers
    assert not any("SIFT" in n for n in report.notes)


# -- known answers: a stand-in extractor whose features make the correct result computable by hand ---------------


class PatchCodedExtractor:
    """Features of a stride-8 cell = that cell's 8x8 pixels (pixel_unshuffle): content moved by whole cells keeps
    its features exactly, so point transfer between two crops of one texture recovers their offset."""

    def __init__(self) -> None:
        self.config = DiftConfig(model="patch-coded", image_size=None, ensemble_size=1, device="cpu", batch_size=1)
        self.device = torch.device("cpu")
        self.is_tiny = False

    def extract_prepared(self, prepared, prompts=None):
        feats = torch.stack([torch.nn.functional.pixel_unshuffle(p.pixels[None], 8)[0] for p in prepared])
        return FeatureBatch(feats, [p.name for p in prepared], [p.original_size for p in prepared],
                            [p.key for p in prepared])


def crops(seed: int, size: tuple[int, int], shifts: list[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A noise texture cropped at (0, 0) and at each (dx, dy): pixel (x, y) of the first crop is pixel
    (x + dx, y + dy) of the crop for (dx, dy). Shifts are multiples of 8 (whole feature cells)."""
    w, h = size
    pad = 32
    big = np.random.default_rng(seed).integers(0, 256, (h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    first = big[pad:pad + h, pad:pad + w]
    return first, [big[pad - dy:pad - dy + h, pad - dx:pad - dx + w] for dx, dy in shifts]


def test_crops_move_content_as_documented():
    first, (moved,) = crops(0, (96, 80), [(16, 8)])
    assert np.array_equal(first[10:50, 10:60], moved[18:58, 26:76])


def write_known_spair(root: Path) -> None:
    """Three pairs with hand-made annotations: the true correspondence is the crop offset, and some target
    keypoints are deliberately moved off it by known distances (threshold: 0.1 x the box's larger side)."""
    import json

    ann = root / "PairAnnotation" / "test"
    ann.mkdir(parents=True)
    cases = [
        # category, seed, offset, source keypoints, displacement of each target keypoint from the true one
        ("cat", 1, (16, 8), [[20, 20], [40, 30], [56, 40], [30, 50]], [(0, 0), (0, 0), (0, 0), (20, 0)]),
        ("dog", 2, (-8, 16), [[30, 20], [50, 30], [60, 40]], [(0, 0), (0, 0), (8, 0)]),  # 8 px = 0.1 x 80: correct
        ("dog", 3, (8, -8), [[40, 40], [60, 30]], [(9, 0), (0, -30)]),  # both off by more than 8 px
    ]
    for pid, (cat, seed, (dx, dy), src_kps, moves) in enumerate(cases, start=1):
        src, (trg,) = crops(seed, (96, 80), [(dx, dy)])
        (root / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        Image.fromarray(src).save(root / "JPEGImages" / cat / f"s{pid}.png")  # lossless: offsets stay exact
        Image.fromarray(trg).save(root / "JPEGImages" / cat / f"t{pid}.png")
        trg_kps = [[x + dx + mx, y + dy + my] for (x, y), (mx, my) in zip(src_kps, moves)]
        data = {"src_imname": f"s{pid}.png", "trg_imname": f"t{pid}.png", "category": cat,
                "src_imsize": [96, 80, 3], "trg_imsize": [96, 80, 3], "src_kps": src_kps, "trg_kps": trg_kps,
                "trg_bndbox": [8, 10, 88, 70]}  # larger side 80: the PCK@0.1 threshold is 8 px
        (ann / f"{pid:06d}-s{pid}-t{pid}:{cat}.json").write_text(json.dumps(data))


def test_spair_runner_known_answers(tmp_path):
    root = tmp_path / "SPair-71k"
    write_known_spair(root)
    report = run_spair(PatchCodedExtractor(), root, FeatureCache(tmp_path / "c", {"stand-in": "patch"}),
                       progress=False)
    cats = report.details["per category"]
    assert cats["cat"]["per_image"] == 75.0 and cats["cat"]["keypoints"] == 4  # 3 of 4
    assert cats["dog"]["per_image"] == 50.0  # pairs at 100 % (3 of 3, one exactly at the threshold) and 0 %
    assert cats["dog"]["per_point"] == pytest.approx(100 * 3 / 5)
    assert report.metrics["PCK@0.1 per image"] == pytest.approx((75 + 100 + 0) / 3)
    assert report.metrics["PCK@0.1 per point"] == pytest.approx(100 * 6 / 9)


def test_pf_willow_runner_known_answers(tmp_path):
    import csv

    root = tmp_path / "PF-WILLOW"
    (root / "duck(S)").mkdir(parents=True)
    src, (trg,) = crops(4, (96, 80), [(8, 16)])
    Image.fromarray(src).save(root / "duck(S)" / "a.png")
    Image.fromarray(trg).save(root / "duck(S)" / "b.png")
    xs = [16, 24, 32, 40, 48, 56, 64, 76, 30, 50]
    ys = [16, 20, 24, 28, 32, 36, 40, 44, 30, 34]
    # Target keypoints span 60 x 28 px, so the threshold is 60 px: 3 px at PCK@0.05, 6 px at PCK@0.10. Two are
    # moved by 5 px (right at 0.10 only) and one by 10 px (wrong at both); none of them leaves the box.
    moves = [(0, 0)] * 7 + [(0, -5), (5, 0), (10, 0)]
    tx = [x + 8 + mx for x, (mx, _) in zip(xs, moves)]
    ty = [y + 16 + my for y, (_, my) in zip(ys, moves)]
    with (root / "test_pairs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["imageA", "imageB"] + [f"c{i}" for i in range(40)])
        w.writerow(["PF-WILLOW/duck(S)/a.png", "PF-WILLOW/duck(S)/b.png", *xs, *ys, *tx, *ty])
    report = run_pf_willow(PatchCodedExtractor(), root, FeatureCache(tmp_path / "c", {"stand-in": "patch"}),
                           progress=False)
    assert report.metrics["PCK@0.10 per point"] == 90.0 and report.metrics["PCK@0.05 per point"] == 70.0
    assert report.metrics["PCK@0.10 per image"] == 90.0 and report.metrics["PCK@0.05 per image"] == 70.0


def test_hpatches_runner_known_answers(tmp_path):
    root, kp_dir = tmp_path / "hpatches", tmp_path / "kp"
    kp_dir.mkdir()
    shifts = [(8, 0), (16, 8), (0, 16), (-8, 8), (8, -8)]
    gx, gy = np.meshgrid(np.arange(16, 73, 9), np.arange(16, 57, 8))
    kps1 = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)  # inside every image after its shift
    # i_same: six identical images (identity: exact); v_shift: crops at known offsets, H = that translation;
    # v_wrong: the same crops, but each H claims 10 px more in x than the images moved: a corner error of
    # exactly 10 px, wrong at 1, 3 and 5 px.
    for seq, seed, claim in (("i_same", 5, None), ("v_shift", 6, 0), ("v_wrong", 7, 10)):
        d = root / seq
        d.mkdir(parents=True)
        first, moved = crops(seed, (96, 80), shifts)
        images = [first] * 6 if claim is None else [first, *moved]
        for k, img in enumerate(images, start=1):
            Image.fromarray(img).save(d / f"{k}.ppm")
            dx, dy = (0, 0) if claim is None or k == 1 else shifts[k - 2]
            np.savetxt(kp_dir / f"{seq}-{k}.kp", kps1 + np.array([dx, dy]), fmt="%.1f")
            if k > 1:
                H = np.array([[1.0, 0, dx + (claim or 0)], [0, 1.0, dy], [0, 0, 1.0]])
                np.savetxt(d / f"H_1_{k}", H, fmt="%.8g")
    report = run_hpatches(PatchCodedExtractor(), root, FeatureCache(tmp_path / "c", {"stand-in": "patch"}),
                          keypoints=kp_dir, progress=False)
    acc = report.details["accuracy"]
    assert acc["illumination"] == {"1px": 100.0, "3px": 100.0, "5px": 100.0}
    assert acc["viewpoint"] == {"1px": 50.0, "3px": 50.0, "5px": 50.0}  # v_shift all right, v_wrong all wrong
    assert acc["overall"]["1px"] == pytest.approx(100 * 10 / 15)


class PositionCodedExtractor:
    """A stand-in extractor whose features identify each stride-8 cell (the same in every frame)."""

    def __init__(self, channels: int = 64, stride: int = 8, same_every_frame: bool = True) -> None:
        self.config = DiftConfig(model="position-coded", image_size=None, ensemble_size=1, device="cpu", batch_size=1, t=51,
                                 up_ft_index=2)
        self.device = torch.device("cpu")
        self.is_tiny = False
        self.channels, self.stride = channels, stride
        self.same_every_frame = same_every_frame
        self.calls = 0

    def extract_prepared(self, prepared, prompts):
        feats = []
        for p in prepared:
            _, h, w = p.pixels.shape
            self.calls += 1
            g = torch.Generator().manual_seed(0 if self.same_every_frame else self.calls)
            feats.append(torch.randn(self.channels, h // self.stride, w // self.stride, generator=g))
        return FeatureBatch(torch.stack(feats), [p.name for p in prepared], [p.original_size for p in prepared],
                            [p.key for p in prepared])


def test_davis_runner_recovers_static_objects(davis_root, tmp_path):
    from dift_fast.eval.datasets.davis import read_label_png
    from dift_fast.eval.propagation import finalize_labels, to_one_hot

    extractor = PositionCodedExtractor()
    cache = FeatureCache(tmp_path / "cache", {"stand-in": "position-coded"})  # no model: its own identity
    report = run_davis(extractor, davis_root, cache, short_side=48, predictions_dir=tmp_path / "pred",
                       progress=False)
    assert report.counts == {"videos": 1, "objects": 2, "frames": 4}
    # Static objects and features that identify each cell in every frame: each query's strongest affinities are
    # its own cell, so propagation returns the first mask as seen at feature resolution. The best any
    # propagation can do is the first frame's one-hot mask at 8x6 cells through the same upsampling.
    gt, _ = read_label_png(davis_root / "Annotations" / "480p" / "static" / "00000.png")
    cells = np.array(Image.fromarray(gt).resize((8, 6), Image.NEAREST))
    best = finalize_labels(to_one_hot(cells, 3), 8, (64, 48))
    for frame in ("00001", "00002", "00003"):
        pred = np.array(Image.open(tmp_path / "pred" / "static" / f"{frame}.png"))
        assert (pred == best).mean() > 0.99
    # The bilinear upsampling rounds the objects' corners: J and F stay below 100 but high.
    assert report.metrics["J-Mean"] > 85.0 and report.metrics["F-Mean"] > 80.0
    png = Image.open(tmp_path / "pred" / "static" / "00002.png")
    assert png.mode == "P" and png.size == (64, 48) and png.getpalette()[3:6] == [128, 0, 0]
    # Control: features drawn afresh for every frame carry no correspondence, and the score collapses.
    control = PositionCodedExtractor(same_every_frame=False)
    worse = run_davis(control, davis_root, FeatureCache(tmp_path / "cache2", {"stand-in": "fresh"}), short_side=48,
                      progress=False)
    assert worse.metrics["J-Mean"] < 50.0


def test_davis_runner_with_tiny_model(tiny_extractor_factory, davis_root, tmp_path):
    """The real extractor through the runner (the scores themselves: the position-coded test above)."""
    extractor = tiny_extractor_factory(ensemble_size=1)
    cache = FeatureCache(tmp_path / "cache", extractor)
    report = run_davis(extractor, davis_root, cache, short_side=48, progress=False)
    assert report.counts["frames"] == 4 and report.counts["objects"] == 2
    assert any("short side 48" in n for n in report.notes)
    again = run_davis(extractor, davis_root, cache, short_side=48, progress=False)
    assert again.metrics == report.metrics  # resumed from the cache: the same features, the same scores


def test_synthetic_pairs_and_grid():
    a, b = make_pairs(4, seed=3, size=(96, 64)), make_pairs(4, seed=3, size=(96, 64))
    assert [p.name[:2] for p in a] == ["v_", "i_", "v_", "i_"]
    assert all((p.image1 == q.image1).all() and np.allclose(p.H, q.H) for p, q in zip(a, b))  # seeded
    assert np.allclose(a[1].H, np.eye(3)) and not np.allclose(a[0].H, np.eye(3))
    p0, p1 = grid_points(np.eye(3), (96, 64), (96, 64), n=4)
    assert len(p0) == 16 and np.allclose(p0, p1)
    shift = np.array([[1.0, 0, 50], [0, 1, 0], [0, 0, 1]])
    p0, p1 = grid_points(shift, (96, 64), (96, 64), n=4)
    # x shifted by 50 px stays inside a 96 px wide image only for grid columns x <= 45 (2 of 4 columns).
    assert len(p0) == 8 and np.allclose(p1 - p0, [50, 0])


def test_cli_synthetic_homography_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", "synthetic-homography", "--model", str(tiny_model_dir), "--image-size", "64x48",
                 "--ensemble-size", "1", "--device", "cpu", "--limit", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean nothing" in printed and "grid PCK@0.10" in printed
    data = json.loads((out / "synthetic-homography.json").read_text())
    assert data["counts"]["pairs"] == 2 and data["config"]["ensemble_size"] == 1
    assert set(data["metrics"]) >= {"overall 1px", "illumination 3px", "viewpoint 5px", "grid PCK@0.05"}
    assert any("image_size" in n for n in data["notes"])  # settings that differ from the protocol are listed
    assert (out / "synthetic-homography.md").is_file() and any((out / "cache").rglob("*.safetensors"))


def test_cli_errors(tmp_path, capsys):
    assert main(["eval", "spair", "--model", "tiny-random"]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert main(["eval", "hpatches", "--root", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["eval", "davis", "--root", str(tmp_path), "--limit", "0"]) == 2
