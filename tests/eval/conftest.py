"""Fixture datasets written in each benchmark's official on-disk format (a few small generated images each)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The first DAVIS palette entries (index -> RGB): 0 black, 1 dark red, 2 dark green, 3 olive.
DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour texture [H, W, 3] uint8 (bicubic upsampling of coarse noise)."""
    coarse = rng.integers(0, 256, size=(max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def write_spair(root: Path, rng: np.random.Generator) -> Path:
    """SPair-71k/ with JPEGImages/<cat>/ and PairAnnotation/test/<id>-<src>-<trg>:<cat>.json (official keys)."""
    images = {("cat", "2008_000001"): (80, 64), ("dog", "2008_000002"): (72, 56), ("dog", "2008_000003"): (64, 80),
              ("tvmonitor", "2009_000004"): (64, 64)}
    for (cat, stem), (w, h) in images.items():
        (root / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, w, h)).save(root / "JPEGImages" / cat / f"{stem}.jpg", quality=95)
    ann = root / "PairAnnotation" / "test"
    ann.mkdir(parents=True)
    (root / "PairAnnotation" / "trn").mkdir()
    (root / "PairAnnotation" / "val").mkdir()

    def pair(pid, cat, src, trg, src_kps, trg_kps, trg_box, kps_ids):
        (sw, sh), (tw, th) = images[(cat, src)], images[(cat, trg)]
        data = {
            "pair_id": pid, "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
            "src_imsize": [sw, sh, 3], "trg_imsize": [tw, th, 3],
            "src_bndbox": [2, 3, sw - 4, sh - 2], "trg_bndbox": trg_box,
            "category": cat, "src_pose": 4, "trg_pose": 4,
            "src_truncation": 0, "trg_truncation": 0, "src_occlusion": 0, "trg_occlusion": 0,
            "src_kps": src_kps, "trg_kps": trg_kps, "kps_ids": kps_ids,
            "mirror": 0, "viewpoint_variation": 0, "scale_variation": 0,
            "truncation": 0, "occlusion": 0,
        }
        (ann / f"{pid:06d}-{src}-{trg}:{cat}.json").write_text(json.dumps(data))

    # 1: an image against itself, keypoints away from the borders (where upsampled features repeat): point
    # transfer must find every keypoint.
    kps = [[20, 20], [40, 30], [60, 40], [25, 45]]
    pair(1, "cat", "2008_000001", "2008_000001", kps, kps, [0, 0, 79, 63], ["0", "3", "5", "7"])
    # 2: two different images, keypoints on the borders and corners.
    pair(2, "dog", "2008_000002", "2008_000003", [[0, 0], [71, 55], [71, 0]], [[0, 0], [63, 79], [30, 40]],
         [4, 4, 60, 76], ["1", "2", "4"])
    # 3: a pair with no keypoints visible in both images.
    pair(3, "tvmonitor", "2009_000004", "2009_000004", [], [], [0, 0, 63, 63], [])
    return root


def write_pf_willow(root: Path, rng: np.random.Generator) -> Path:
    """PF-WILLOW/ with class folders and test_pairs.csv (header, imageA, imageB, XA*, YA*, XB*, YB*)."""
    names = [("car(G)", "car_001"), ("car(G)", "car_002"), ("winebottle(wC)", "bottle_001")]
    for cls, stem in names:
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, 72, 56)).save(root / cls / f"{stem}.png")
    header = ["imageA", "imageB"] + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
    # away from the borders, where upsampled features repeat and point transfer has ties
    xs = [float(v) for v in np.linspace(12, 58, 10).round(1)]
    ys = [float(v) for v in np.linspace(44, 10, 10).round(1)]
    with (root / "test_pairs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(["PF-WILLOW/car(G)/car_001.png", "PF-WILLOW/car(G)/car_002.png", *xs, *ys, *ys, *xs])
        w.writerow(["PF-WILLOW/winebottle(wC)/bottle_001.png", "PF-WILLOW/winebottle(wC)/bottle_001.png",
                    *xs, *ys, *xs, *ys])
    return root


def write_hpatches(root: Path, kp_dir: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """hpatches-sequences-release/<seq>/1..6.ppm + H_1_2..H_1_6, and <seq>-<k>.kp keypoint files."""
    import cv2

    kp_dir.mkdir(parents=True)
    base = texture(rng, 64, 48)
    shift = np.array([[1.0, 0, 3.0], [0, 1.0, 2.0], [0, 0, 1.0]])
    for seq, H in (("i_fixture", np.eye(3)), ("v_fixture", shift)):
        d = root / seq
        d.mkdir(parents=True)
        for k in range(1, 7):
            img = base if k == 1 or seq.startswith("i_") else cv2.warpPerspective(base, H, (64, 48))
            Image.fromarray(img).save(d / f"{k}.ppm")
            if k > 1:
                np.savetxt(d / f"H_1_{k}", H, fmt="%.8g")
            pts = rng.uniform([0, 0], [63, 47], size=(40, 2)).round()
            if k == 1 or seq.startswith("i_"):
                pts = np.random.default_rng(7).uniform([0, 0], [63, 47], size=(40, 2)).round()
            pts = np.concatenate([pts, pts[:3]])  # duplicates: the protocol removes them
            np.savetxt(kp_dir / f"{seq}-{k}.kp", pts, fmt="%.1f")
    return root, kp_dir


def write_davis(root: Path, rng: np.random.Generator, n_frames: int = 4) -> Path:
    """DAVIS/ with ImageSets/2017/val.txt, JPEGImages/480p/<v>/*.jpg, Annotations/480p/<v>/*.png (palette)."""
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("static\n")
    (root / "ImageSets" / "2017" / "train.txt").write_text("other\n")
    frames = root / "JPEGImages" / "480p" / "static"
    anns = root / "Annotations" / "480p" / "static"
    frames.mkdir(parents=True)
    anns.mkdir(parents=True)
    labels = np.zeros((48, 64), dtype=np.uint8)
    labels[8:24, 8:24] = 1  # object 1: 2 x 2 cells of 8 px
    labels[16:40, 40:56] = 2  # object 2: 2 x 3 cells
    img = texture(rng, 64, 48)
    for i in range(n_frames):
        frame = np.clip(img.astype(int) + rng.integers(-3, 4, size=img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(frame).save(frames / f"{i:05d}.jpg", quality=95)  # a static scene, some sensor noise
        png = Image.fromarray(labels, mode="P")
        png.putpalette(DAVIS_PALETTE)
        png.save(anns / f"{i:05d}.png")
    return root


@pytest.fixture
def spair_root(tmp_path, rng):
    return write_spair(tmp_path / "SPair-71k", rng)


@pytest.fixture
def pf_willow_root(tmp_path, rng):
    return write_pf_willow(tmp_path / "PF-WILLOW", rng)


@pytest.fixture
def hpatches_root(tmp_path, rng):
    return write_hpatches(tmp_path / "hpatches-sequences-release", tmp_path / "superpoint-1k", rng)


@pytest.fixture
def davis_root(tmp_path, rng):
    return write_davis(tmp_path / "DAVIS", rng)
