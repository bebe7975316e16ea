"""JHMDB keypoint propagation: loader (official layout), heat maps, PCK by hand, the runner end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dift_fast import DiftConfig
from dift_fast.cli import main
from dift_fast.eval.datasets.jhmdb import JHMDB_JOINTS, load_jhmdb, read_joints
from dift_fast.eval.features import FeatureCache
from dift_fast.eval.metrics.jhmdb_pck import JointPckAccumulator, person_threshold
from dift_fast.eval.propagation import heatmap_peaks, keypoint_heatmaps
from dift_fast.eval.runners import run_jhmdb
from dift_fast.extractor import FeatureBatch

savemat = pytest.importorskip("scipy.io", reason="JHMDB's .mat files need scipy (the eval extra)").savemat
pytest.importorskip("cv2", reason="video frames are read with OpenCV (the eval extra)")

# -- fixtures in the official layout ------------------------------------------------------------------------------


def write_video(root, action, video, frames, joints):
    """Rename_Images/<action>/<video>/00001.png ... and joint_positions/<action>/<video>/joint_positions.mat.

    ``joints`` [T, 15, 2] are 0-based (x, y) pixels; the file holds pos_img [2, 15, T] 1-based, as JHMDB does.
    """
    fdir = root / "Rename_Images" / action / video
    fdir.mkdir(parents=True)
    for i, frame in enumerate(frames, 1):
        Image.fromarray(frame).save(fdir / f"{i:05d}.png")
    jdir = root / "joint_positions" / action / video
    jdir.mkdir(parents=True)
    pos_img = np.asarray(joints, dtype=np.float64).transpose(2, 1, 0) + 1.0
    savemat(jdir / "joint_positions.mat", {"pos_img": pos_img, "scale": np.ones(len(frames)), "viewpoint": "E"})
    return fdir, jdir / "joint_positions.mat"


def noise_texture(rng, width, height):
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# Joints on a 4-px grid of a 64x48 frame, in a 32 x 28 box (x 16..48, y 8..36) away from the borders.
JOINTS0 = np.array([[16 + 8 * (j % 5), 8 + 12 * (j // 5) + 4 * (j % 2)] for j in range(15)], dtype=np.float64)


def moving_video(rng, n_frames=4, shift=4):
    """A noise texture sliding left by ``shift`` px per frame, wrapping around, and its joints.

    Wrapping keeps every cell's content in the next frame: content entering at the border would have no match,
    and a cell without a match spreads a little heat over random cells, which the top-3 read-back can pick up.
    """
    base = noise_texture(rng, 64, 48)
    frames = [np.ascontiguousarray(np.roll(base, -shift * k, axis=1)) for k in range(n_frames)]
    joints = np.stack([JOINTS0 - [shift * k, 0] for k in range(n_frames)])
    return frames, joints


@pytest.fixture
def jhmdb_root(tmp_path, rng):
    root = tmp_path / "JHMDB"
    frames, joints = moving_video(rng)
    write_video(root, "walk", "slide_left_0", frames, joints)
    unrelated = [noise_texture(rng, 64, 48) for _ in range(4)]
    write_video(root, "wave", "unrelated_0", unrelated, joints)
    # The papers' list: absolute paths of another machine, frames first (CRW's order)...
    (root / "testlist_split1.txt").write_text(
        "/data/someone/JHMDB/Rename_Images/walk/slide_left_0 "
        "/data/someone/JHMDB/joint_positions/walk/slide_left_0/joint_positions.mat\n"
        "\n"
        # ...or the .mat first (UVC's order)
        "/x/JHMDB/joint_positions/wave/unrelated_0/joint_positions.mat /x/JHMDB/Rename_Images/wave/unrelated_0\n"
    )
    return root


class PatchCodedExtractor:
    """A stand-in extractor whose feature at a stride-8 cell is that cell's pixels (pixel_unshuffle).

    Content that moves by whole cells keeps its features exactly, so propagation should follow it.
    """

    def __init__(self) -> None:
        self.config = DiftConfig(model="patch-coded", image_size=None, ensemble_size=1, device="cpu", batch_size=1, t=51,
                                 up_ft_index=2)
        self.device = torch.device("cpu")
        self.is_tiny = False

    def extract_prepared(self, prepared, prompts=None):
        feats = torch.stack([torch.nn.functional.pixel_unshuffle(p.pixels[None], 8)[0] for p in prepared])
        return FeatureBatch(feats, [p.name for p in prepared], [p.original_size for p in prepared],
                            [p.key for p in prepared])


# -- loader -------------------------------------------------------------------------------------------------------


def test_load_jhmdb_list_rerooted_both_orders(jhmdb_root):
    videos = load_jhmdb(jhmdb_root)  # default: ROOT/testlist_split1.txt
    assert [v.name for v in videos] == ["walk/slide_left_0", "wave/unrelated_0"]
    assert videos[0].frames[0] == jhmdb_root / "Rename_Images" / "walk" / "slide_left_0" / "00001.png"
    assert [f.name for f in videos[0].frames] == ["00001.png", "00002.png", "00003.png", "00004.png"]
    assert videos[1].joints_file == jhmdb_root / "joint_positions" / "wave" / "unrelated_0" / "joint_positions.mat"
    assert len(load_jhmdb(jhmdb_root, limit=1)) == 1
    short = jhmdb_root / "short.txt"
    short.write_text("wave/unrelated_0\n")  # "<action>/<video>" lines work too
    assert [v.name for v in load_jhmdb(jhmdb_root, split=short)] == ["wave/unrelated_0"]


def test_load_jhmdb_official_split(jhmdb_root):
    (jhmdb_root / "testlist_split1.txt").unlink()
    with pytest.raises(FileNotFoundError, match="splits"):
        load_jhmdb(jhmdb_root)
    (jhmdb_root / "splits").mkdir()
    (jhmdb_root / "splits" / "walk_test_split1.txt").write_text("slide_left_0.avi 2\nother_walk.avi 1\n")
    (jhmdb_root / "splits" / "wave_test_split1.txt").write_text("unrelated_0.avi 1\n")
    (jhmdb_root / "splits" / "wave_test_split2.txt").write_text("unrelated_0.avi 2\n")
    assert [v.name for v in load_jhmdb(jhmdb_root)] == ["walk/slide_left_0"]  # split 1, test (2) videos only
    assert [v.name for v in load_jhmdb(jhmdb_root, split="2")] == ["wave/unrelated_0"]


def test_load_jhmdb_errors(jhmdb_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        load_jhmdb(jhmdb_root, split=tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mat b.mat\n")
    with pytest.raises(ValueError, match=r"bad\.txt line 1"):
        load_jhmdb(jhmdb_root, split=bad)
    missing = tmp_path / "missing.txt"
    missing.write_text("walk/not_there\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt line 1.*not_there"):
        load_jhmdb(jhmdb_root, split=missing)


def test_read_joints_converts_and_checks(tmp_path):
    pos = np.zeros((2, 15, 3))
    pos[0, 4, 2], pos[1, 4, 2] = 11.0, 21.0  # MATLAB (1-based) x, y of joint 4 in frame 2
    savemat(tmp_path / "ok.mat", {"pos_img": pos})
    joints = read_joints(tmp_path / "ok.mat")
    assert joints.shape == (3, 15, 2) and tuple(joints[2, 4]) == (10.0, 20.0) and joints[0, 0, 0] == -1.0
    savemat(tmp_path / "no_pos.mat", {"pos_world": pos})
    with pytest.raises(ValueError, match=r"no 'pos_img'.*pos_world"):
        read_joints(tmp_path / "no_pos.mat")
    savemat(tmp_path / "shape.mat", {"pos_img": np.zeros((3, 15, 2))})
    with pytest.raises(ValueError, match=r"\[2, joints, frames\]"):
        read_joints(tmp_path / "shape.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.mat"):
        read_joints(tmp_path / "junk.mat")


# -- heat maps ----------------------------------------------------------------------------------------------------


def test_keypoint_heatmaps_by_hand():
    heat = keypoint_heatmaps(np.array([[2.4, 1.6], [-5.0, -5.0], [np.nan, 1.0], [-0.6, 2.0]]), (5, 6), sigma=0.5)
    assert heat.shape == (4, 5, 6)
    # (2.4, 1.6) rounds to cell (x 2, y 2); value exp(-(dx² + dy²) / (2 * 0.25)) = exp(-2 d²), cut at 3σ -> 2 cells
    assert heat[0, 2, 2] == 1.0
    assert heat[0, 2, 3] == pytest.approx(np.exp(-2.0)) and heat[0, 1, 2] == pytest.approx(np.exp(-2.0))
    assert heat[0, 3, 3] == pytest.approx(np.exp(-4.0)) and heat[0, 4, 4] == pytest.approx(np.exp(-16.0))
    assert heat[0, 2, 5] == 0.0  # 3 cells away: outside the 3σ window
    assert heat[1].sum() == 0 and heat[2].sum() == 0  # far outside, not finite: no keypoint
    # (-0.6, 2): centre x = -1, outside; its tail inside: column 0 holds exp(-2) at the centre row
    # (-0.6, 2): centre x = -1, outside; its tail inside: column 0 at dx = 1, column 1 at dx = 2
    assert heat[3, 2, 0] == pytest.approx(np.exp(-2.0))
    assert heat[3, :, 1].sum() == pytest.approx(np.exp(-8.0) * (1 + 2 * np.exp(-2.0) + 2 * np.exp(-8.0)))
    assert heat[3, :, 2:].sum() == 0
    one_hot = keypoint_heatmaps(np.array([[1.5, 0.2]]), (2, 3), sigma=0)
    assert one_hot.tolist() == [[[0, 0, 1], [0, 0, 0]]]
    with pytest.raises(ValueError, match="sigma"):
        keypoint_heatmaps(np.zeros((1, 2)), (2, 2), sigma=-1)


def test_heatmap_peaks_by_hand():
    heat = torch.zeros(2, 4, 3)
    heat[0, 2, 1], heat[0, 2, 2], heat[0, 3, 1], heat[0, 0, 0] = 4.0, 3.0, 1.0, 0.5
    pts, vis = heatmap_peaks(heat, topk=3)
    # top 3: 4 at (1, 2), 3 at (2, 2), 1 at (1, 3) -> x = (4·1 + 3·2 + 1·1) / 8, y = (4·2 + 3·2 + 1·3) / 8
    assert vis.tolist() == [True, False]
    assert pts[0].tolist() == [11 / 8, 17 / 8] and torch.isnan(pts[1]).all()
    with pytest.raises(ValueError, match="topk"):
        heatmap_peaks(heat, topk=0)


def test_heatmap_round_trip_within_a_tenth_of_a_cell():
    cells = np.array([[3.0, 4.0], [7.2, 1.9], [0.0, 0.0]])
    pts, vis = heatmap_peaks(keypoint_heatmaps(cells, (6, 9)), topk=3)
    # The top 3 are the centre (1) and two of its four equal neighbours (exp(-2)): their mean is off the centre by
    # at most exp(-2) / (1 + 2 exp(-2)) = 0.107 cells per axis, the bias CRW's read-back has too.
    assert vis.all()
    assert np.abs(pts.numpy() - np.floor(cells + 0.5)).max() <= np.exp(-2) / (1 + 2 * np.exp(-2)) + 1e-9


# -- PCK by hand --------------------------------------------------------------------------------------------------


def test_person_threshold_by_hand():
    gt = np.array([[0.0, 0.0], [30.0, 40.0], [10.0, 10.0]])
    assert person_threshold(gt, [True, True, True]) == pytest.approx(0.6 * 50.0)  # box 30 x 40: diagonal 50
    assert person_threshold(gt, [True, False, True]) == pytest.approx(0.6 * np.hypot(10, 10))
    assert person_threshold(gt, [False, False, False]) == 0.0


def test_joint_pck_by_hand():
    acc = JointPckAccumulator(3, (0.1, 0.2))
    gt = np.array([
        [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]],  # frame 0: given, never scored (its predictions are garbage)
        [[0.0, 0.0], [30.0, 40.0], [10.0, 10.0]],  # frame 1: box 30 x 40, threshold 0.6 * 50 = 30
        [[0.0, 0.0], [50.0, 50.0], [6.0, 8.0]],  # frame 2: joint 1 unseen, box of joints 0, 2: 6 x 8, thr 6
    ])
    pred = np.array([
        [[99.0, 99.0], [99.0, 99.0], [99.0, 99.0]],
        [[3.0, 0.0], [34.0, 40.0], [10.0, 17.0]],  # errors 3, 4, 7 -> 0.1, 0.133, 0.233 of 30
        [[0.0, 1.0], [0.0, 0.0], [6.0, 8.0]],  # errors 1 (1/6 = 0.167), -, 0
    ])
    visible = np.array([[True] * 3, [True] * 3, [True, False, True]])
    video = acc.add_video(gt, pred, visible)
    # joint 0: frame 1 at 0.1 exactly (correct at both: <=), frame 2 at 0.167 (0.2 only) -> 50 %, 100 %
    # joint 1: frame 1 at 0.133 (0.2 only) -> 0 %, 100 %
    # joint 2: frame 1 at 0.233 (neither), frame 2 exact -> 50 %, 50 %
    per_joint = acc.per_joint()
    assert [per_joint[f"joint {j}"]["PCK@0.1"] for j in range(3)] == [50.0, 0.0, 50.0]
    assert [per_joint[f"joint {j}"]["PCK@0.2"] for j in range(3)] == [100.0, 100.0, 50.0]
    assert [per_joint[f"joint {j}"]["points"] for j in range(3)] == [2, 1, 2]
    # the headline is the mean over joints, (50 + 0 + 50) / 3 and (100 + 100 + 50) / 3, not the pooled 2/5, 4/5
    summary = acc.summary()
    assert summary["PCK@0.1"] == pytest.approx(100 / 3) and summary["PCK@0.2"] == pytest.approx(250 / 3)
    assert video["PCK@0.1"] == pytest.approx(40.0) and video["PCK@0.2"] == pytest.approx(80.0)
    assert video["joints scored"] == 5 and video["frames scored"] == 2


def test_joint_pck_unscored_joint_left_out():
    acc = JointPckAccumulator(2, (0.1,))
    gt = np.zeros((2, 2, 2))
    gt[1, 0] = [10.0, 0.0]
    acc.add_video(gt, gt.copy(), np.array([[True, True], [True, False]]))
    # joint 1 is never scored: no PCK of its own, and the mean is joint 0's alone
    assert acc.per_joint()["joint 1"]["PCK@0.1"] is None and acc.summary()["PCK@0.1"] == 100.0
    with pytest.raises(ValueError, match=r"\[T, 2, 2\]"):
        acc.add_video(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((2, 3), dtype=bool))
    assert JointPckAccumulator(2).summary() == {"PCK@0.1": None, "PCK@0.2": None}


# -- runner -------------------------------------------------------------------------------------------------------


def test_jhmdb_runner_follows_moving_content(jhmdb_root, tmp_path):
    extractor = PatchCodedExtractor()
    cache = FeatureCache(tmp_path / "cache", {"stand-in": "patch-coded"})  # no model: its own identity
    # short side 96: the 64x48 frames are upscaled 2x to 128x96 (16 x 12 cells of 8 px), so a joint on the 4-px
    # grid sits on a cell, and the 4 px slide per frame is one cell: the texture's features move with it.
    report = run_jhmdb(extractor, jhmdb_root, cache, short_side=96, limit=1, progress=False)
    assert report.counts == {"videos": 1, "frames scored": 3, "joints scored": 45}
    # Every joint follows the texture to within ~0.13 cells per axis (the read-back's 0.107-cell tie bias plus a
    # little heat spread by propagation; 0.5 px here), well below the smallest threshold, 0.1 x 0.6 x the
    # diagonal of the joints' 32 x 28 px box = 2.55 px.
    assert report.metrics == {"PCK@0.1": 100.0, "PCK@0.2": 100.0}
    assert report.details["per joint"]["left ankle"]["points"] == 3
    assert set(report.details["per joint"]) == set(JHMDB_JOINTS)
    # Control: frames of unrelated noise (same joints) carry no correspondence and the score collapses.
    control = run_jhmdb(extractor, jhmdb_root, cache, short_side=96, split=_one_line(jhmdb_root, "wave/unrelated_0"),
                        progress=False)
    assert control.metrics["PCK@0.1"] < 50.0, control.metrics


def _one_line(root, name):
    path = root / f"{name.replace('/', '_')}.txt"
    path.write_text(name + "\n")
    return path


def test_jhmdb_runner_with_tiny_model(tiny_extractor_factory, jhmdb_root, tmp_path):
    extractor = tiny_extractor_factory(ensemble_size=1)
    cache = FeatureCache(tmp_path / "cache", extractor)
    report = run_jhmdb(extractor, jhmdb_root, cache, short_side=48, limit=1, progress=False)
    assert report.counts["frames scored"] == 3 and 0.0 <= report.metrics["PCK@0.1"] <= report.metrics["PCK@0.2"]
    assert any("random weights" in n for n in report.notes) and any("short side 48" in n for n in report.notes)


def test_cli_eval_jhmdb_end_to_end(tiny_model_dir, jhmdb_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", "jhmdb", "--root", str(jhmdb_root), "--model", str(tiny_model_dir), "--ensemble-size", "1",
                 "--device", "cpu", "--short-side", "48", "--limit", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "PCK@0.2" in capsys.readouterr().out
    data = json.loads((out / "jhmdb.json").read_text())
    assert data["counts"]["videos"] == 1 and data["config"]["t"] == 51 and data["config"]["up_ft_index"] == 2
    assert data["details"]["propagation"]["params"]["topk"] == 15 and data["reported"] == {}
    assert (out / "jhmdb.md").is_file()
