"""Loaders read the fixture datasets written in each official layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dift_fast.eval.datasets.davis import load_davis, read_label_png
from dift_fast.eval.datasets.hpatches import load_hpatches, load_keypoints
from dift_fast.eval.datasets.pf_willow import load_pf_willow_pairs, willow_category
from dift_fast.eval.datasets.spair import load_spair_pairs


def test_spair_loader(spair_root):
    pairs = load_spair_pairs(spair_root)
    assert [p.category for p in pairs] == ["cat", "dog", "tvmonitor"]  # file-name order
    p = pairs[1]
    assert p.src_path == spair_root / "JPEGImages" / "dog" / "2008_000002.jpg" and p.src_path.is_file()
    assert (p.src_size, p.trg_size) == ((72, 56), (64, 80))  # imsize is [width, height, channels]
    assert p.src_kps.tolist() == [[0, 0], [71, 55], [71, 0]] and p.trg_bndbox == [4, 4, 60, 76]
    assert p.extra["kps_ids"] == ["1", "2", "4"] and p.name == "000002-2008_000002-2008_000003:dog"
    assert pairs[2].src_kps.shape == (0, 2)
    assert len(load_spair_pairs(spair_root, limit=2)) == 2


def test_spair_loader_errors(spair_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="PairAnnotation/val"):
        load_spair_pairs(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match=r"no \*\.json"):
        load_spair_pairs(spair_root, split="val")
    bad = spair_root / "PairAnnotation" / "test" / "000009-a-b:cat.json"
    bad.write_text(json.dumps({"src_imname": "a.jpg"}))
    with pytest.raises(ValueError, match="lacks"):
        load_spair_pairs(spair_root)


def test_pf_willow_loader(pf_willow_root):
    pairs = load_pf_willow_pairs(pf_willow_root)
    assert len(pairs) == 2
    p = pairs[0]
    assert p.category == "car(G)" and p.src_path == pf_willow_root / "car(G)" / "car_001.png"
    # columns: 10 x then 10 y for the source, then the target's; (XA1, YA1) = (12, 44), (XB1, YB1) = (44, 12).
    assert p.src_kps.shape == (10, 2) and p.src_kps[0].tolist() == [12.0, 44.0]
    assert p.trg_kps[0].tolist() == [44.0, 12.0] and p.trg_path.name == "car_002.png"
    assert willow_category("winebottle(wC)") == "winebottle"
    assert len(load_pf_willow_pairs(pf_willow_root, limit=1)) == 1


def test_pf_willow_loader_errors(pf_willow_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test_pairs\.csv"):
        load_pf_willow_pairs(tmp_path)
    with (pf_willow_root / "test_pairs.csv").open("a") as f:
        f.write("PF-WILLOW/car(G)/missing.png,PF-WILLOW/car(G)/car_001.png" + ",1" * 40 + "\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_pf_willow_pairs(pf_willow_root)


def test_hpatches_loader(hpatches_root):
    root, kp_dir = hpatches_root
    seqs = load_hpatches(root)
    assert [s.name for s in seqs] == ["i_fixture", "v_fixture"]
    assert [s.kind for s in seqs] == ["illumination", "viewpoint"]
    assert seqs[1].homographies[4].tolist() == [[1, 0, 3], [0, 1, 2], [0, 0, 1]]
    kps = load_keypoints(kp_dir, "v_fixture", 1)
    assert kps.shape == (43, 2) and kps.dtype == np.float32
    np.save(kp_dir / "v_fixture-2.npy", np.array([[1.0, 2.0, 0.9]]))
    (kp_dir / "v_fixture-2.kp").unlink()
    assert load_keypoints(kp_dir, "v_fixture", 2).tolist() == [[1.0, 2.0]]  # score column dropped
    with pytest.raises(FileNotFoundError, match="v_fixture-7"):
        load_keypoints(kp_dir, "v_fixture", 7)
    (root / "v_fixture" / "H_1_3").unlink()
    with pytest.raises(FileNotFoundError, match="H_1_3"):
        load_hpatches(root)


def test_davis_loader(davis_root):
    videos = load_davis(davis_root)
    assert [v.name for v in videos] == ["static"]
    v = videos[0]
    assert [f.name for f in v.frames] == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    labels, palette = read_label_png(v.first_annotation)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]  # indices, not palette colours
    assert palette[3:6] == [128, 0, 0]
    with pytest.raises(FileNotFoundError, match=r"train\.txt"):
        load_davis(davis_root / "nowhere", split="train")
    with pytest.raises(FileNotFoundError, match="no frames"):
        load_davis(davis_root, split="train")
