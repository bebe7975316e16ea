"""dift-fast match-pairs: hloc pairs file in, features.h5 + matches.h5 out that hloc's readers accept."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

h5py = pytest.importorskip("h5py")

from hloc_readers import feature_pair_data, find_pair, get_keypoints, get_matches, list_h5_names  # noqa: E402

from dift_fast.cli import main  # noqa: E402
from dift_fast.interop.h5journal import IDENTITY_ATTR, H5Journal, H5SettingsError  # noqa: E402
from dift_fast.interop.hloc import check_image_name, matches_dtype, names_to_pair, parse_pairs  # noqa: E402
from dift_fast.interop.match_pairs import match_pairs  # noqa: E402

TINY_ARGS = ["--ensemble-size", "2", "--image-size", "64x48", "--device", "cpu", "--no-progress"]
SIZES = {"a.png": (70, 50), "sub/b.png": (40, 60), "sub/deep/c.jpg": (64, 48), "d.png": (90, 66)}


@pytest.fixture
def scene(tmp_path):
    """Four small images (two in sub-folders) and a pairs file with a reversed duplicate and a comment."""
    rng = np.random.default_rng(7)
    images = tmp_path / "images"
    for name, (w, h) in SIZES.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "# retrieval pairs\na.png sub/b.png\nsub/b.png a.png\n\na.png sub/deep/c.jpg\nsub/deep/c.jpg sub/b.png\n"
    )
    return tmp_path, images, pairs


class CountingExtractor:
    """Wraps an extractor and records the names of every image it extracts."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.calls, self.fail_after = inner, [], fail_after
        self.config, self.device, self.is_tiny = inner.config, inner.device, inner.is_tiny

    def __getattr__(self, name):  # components, backend...: what the run reads to check the feature identity
        return getattr(self.inner, name)

    def extract_prepared(self, prepared, *args, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-run
        self.calls += [p.name for p in prepared]
        return self.inner.extract_prepared(prepared, *args, **kwargs)


def run(scene, extractor, **kwargs):
    root, images, pairs = scene
    kwargs.setdefault("pairs", pairs)
    return match_pairs(
        images,
        kwargs.pop("pairs"),
        root / "features.h5",
        root / "matches.h5",
        config=extractor.config,
        extractor=extractor,
        **kwargs,
    )


def test_files_read_back_with_hlocs_access_patterns(scene, tiny_extractor_factory):
    root = scene[0]
    extractor = CountingExtractor(tiny_extractor_factory())
    summary = run(scene, extractor)
    assert summary.ok and summary.pairs == 3 and summary.pairs_matched == 3  # the reversed duplicate counts once
    assert sorted(extractor.calls) == ["a.png", "sub/b.png", "sub/deep/c.jpg"]  # each image extracted once
    feats, matches = root / "features.h5", root / "matches.h5"
    assert sorted(list_h5_names(feats)) == ["a.png", "sub/b.png", "sub/deep/c.jpg"]
    assert sorted(list_h5_names(matches)) == sorted(
        ["a.png/sub-b.png", "a.png/sub-deep-c.jpg", "sub-deep-c.jpg/sub-b.png"]
    )
    c, h, w = extractor.inner.feature_shape()
    for name in ("a.png", "sub/b.png"):
        kps = get_keypoints(feats, name)
        W, H = SIZES[name]
        assert kps.shape == (h * w, 2) and kps.dtype == np.float32
        # one keypoint per feature cell, at the cell's centre in the original image (0-based pixel centres)
        assert np.allclose(kps[0], [W / w / 2 - 0.5, H / h / 2 - 0.5]) and np.allclose(
            kps[-1], [W - W / w / 2 - 0.5, H - H / h / 2 - 0.5]
        )
    data = feature_pair_data(feats, "a.png", "sub/b.png")  # what hloc's FeaturePairsDataset hands a matcher
    assert data["descriptors0"].shape == (c, h * w) and data["scores0"].shape == (h * w,)
    assert data["image0"].shape == (1, 50, 70) and data["image1"].shape == (1, 60, 40)  # image_size is (w, h)
    assert torch.allclose(data["descriptors0"].norm(dim=0), torch.ones(h * w), atol=2e-3)  # L2-normalised, fp16
    # matches: the mutual nearest neighbours of the stored descriptors, in hloc's dtypes
    with h5py.File(matches) as fd:
        grp = fd["a.png/sub-b.png"]
        assert grp["matches0"].dtype == np.int16 and grp["matching_scores0"].dtype == np.float16
        assert grp["matches0"].shape == (h * w,)
    m, s = get_matches(matches, "a.png", "sub/b.png")
    cos = data["descriptors0"].T.double() @ data["descriptors1"].double()  # the test's own oracle
    cos = cos / data["descriptors0"].double().norm(dim=0)[:, None] / data["descriptors1"].double().norm(dim=0)
    best1, best0 = cos.argmax(1), cos.argmax(0)
    assert m.tolist() == [[i, int(best1[i])] for i in range(len(best1)) if int(best0[best1[i]]) == i]
    assert np.allclose(s, cos[m[:, 0], m[:, 1]].numpy(), atol=2e-3)  # fp16 scores
    # a pair asked for in the other order is found reversed and flipped, as hloc does
    with h5py.File(matches) as fd:
        assert find_pair(fd, "sub/b.png", "a.png") == ("a.png/sub-b.png", True)
    m_rev, _ = get_matches(matches, "sub/b.png", "a.png")
    assert np.array_equal(m_rev, m[:, ::-1])


def test_rerun_skips_everything_and_new_pairs_extract_only_new_images(scene, tiny_extractor_factory):
    root, _, pairs = scene
    first = CountingExtractor(tiny_extractor_factory())
    run(scene, first)
    before = {n: get_matches(root / "matches.h5", *n.split(" ")) for n in ("a.png sub/b.png",)}

    def must_not_load():
        raise AssertionError("the model was loaded although nothing needed extracting")

    summary = match_pairs(
        root / "images", pairs, root / "features.h5", root / "matches.h5", config=first.config, extractor=must_not_load
    )
    assert summary.ok and summary.pairs_done_before == 3 and summary.pairs_matched == 0
    assert summary.images_done_before == 3 and summary.images_extracted == 0
    assert summary.tiny_random  # known from the model folder, without loading it
    with pairs.open("a") as f:
        f.write("d.png a.png\n")
    second = CountingExtractor(tiny_extractor_factory())
    summary = run(scene, second)
    assert second.calls == ["d.png"] and summary.pairs_matched == 1 and summary.pairs_done_before == 3
    assert "d.png/a.png" in list_h5_names(root / "matches.h5") and len(list_h5_names(root / "matches.h5")) == 4
    after = get_matches(root / "matches.h5", "a.png", "sub/b.png")
    assert np.array_equal(after[0], before["a.png sub/b.png"][0])  # earlier pairs untouched


def test_interrupted_run_keeps_finished_images(scene, tiny_extractor_factory):
    root, _, _ = scene
    extractor = CountingExtractor(tiny_extractor_factory(), fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        run(scene, extractor, rotate_seconds=0)
    assert sorted(list_h5_names(root / "features.h5")) == sorted(extractor.calls)  # the two finished images
    assert not (root / "matches.h5").exists()
    resumed = CountingExtractor(tiny_extractor_factory())
    summary = run(scene, resumed)
    assert len(resumed.calls) == 1 and summary.ok and summary.pairs_matched == 3


def _fork(child) -> int:
    """Run ``child`` in a forked process that dies without cleanup (``os._exit``); returns its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(3)  # child() should have exited itself: 3 means it returned or raised
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_journal_survives_a_kill_mid_write_and_mid_commit(tmp_path):
    path = tmp_path / "out.h5"
    ident = {"format": "test/1"}
    with H5Journal(path, ident, required=("x",), label="--out") as j:
        j.write("first/a.jpg", {"x": np.arange(3)})

    def killed_while_writing():
        j = H5Journal(path, ident, required=("x",), label="--out", rotate_seconds=0)
        j.open()
        j.write("b.jpg", {"x": np.arange(4)})  # complete part (rotated)
        j._open_part()
        grp = j._part.create_group("c.jpg")
        grp.create_dataset("x", data=np.arange(5))  # half-written part, never closed
        os._exit(1)

    assert _fork(killed_while_writing) == 1
    with h5py.File(path) as f:  # the file is the committed state, readable
        assert list_h5_names(path) == ["first/a.jpg"] and f.attrs[IDENTITY_ATTR]
    with H5Journal(path, ident, required=("x",), label="--out") as j:
        assert "b.jpg" in j and "c.jpg" not in j  # the complete part is merged, the open one dropped
    assert sorted(list_h5_names(path)) == ["b.jpg", "first/a.jpg"]

    def killed_while_committing():
        j = H5Journal(path, ident, required=("x",), label="--out")
        j.open()
        j.write("d.jpg", {"x": np.arange(6)})
        replace = os.replace

        def die_instead_of_replacing_the_file(src, dst):
            if Path(dst) == path:
                os._exit(1)  # the merged copy is written and the part complete; the file is not yet replaced
            replace(src, dst)

        os.replace = die_instead_of_replacing_the_file
        j.commit()

    assert _fork(killed_while_committing) == 1
    assert sorted(list_h5_names(path)) == ["b.jpg", "first/a.jpg"]  # untouched
    with H5Journal(path, ident, required=("x",), label="--out"):
        pass
    assert sorted(list_h5_names(path)) == ["b.jpg", "d.jpg", "first/a.jpg"]
    assert not list(tmp_path.glob(".out.h5.merge*")) and not (tmp_path / ".out.h5.parts").exists()


def test_files_made_otherwise_are_refused_and_left_alone(scene, tiny_extractor_factory):
    root, _, _ = scene
    extractor = tiny_extractor_factory()
    run(scene, extractor)
    other = tiny_extractor_factory(t=100)
    with pytest.raises(H5SettingsError, match=r"--features .* other settings \(t: file has 261, this run 100\)"):
        run(scene, other)
    counting = CountingExtractor(extractor)
    with pytest.raises(H5SettingsError, match=r"--matches .*mutual: file has True, this run False"):
        match_pairs(
            root / "images",
            root / "pairs.txt",
            root / "new.h5",
            root / "matches.h5",
            config=extractor.config,
            extractor=counting,
            mutual=False,
        )
    assert counting.calls == [] and not (root / "new.h5").exists()  # refused before any work
    hloc_file = root / "hloc.h5"
    with h5py.File(hloc_file, "w") as f:
        f.create_dataset("a.png/keypoints", data=np.zeros((3, 2)))
    before = hloc_file.read_bytes()
    with pytest.raises(H5SettingsError, match="not written by dift-fast"):
        match_pairs(
            root / "images", root / "pairs.txt", hloc_file, root / "m2.h5", config=extractor.config, extractor=extractor
        )
    assert hloc_file.read_bytes() == before
    (root / "junk.h5").write_bytes(b"\x89HDF\r\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=r"junk\.h5 is not a readable HDF5 file"):
        match_pairs(
            root / "images",
            root / "pairs.txt",
            root / "junk.h5",
            root / "m3.h5",
            config=extractor.config,
            extractor=extractor,
        )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.png", r"pairs.txt:2: expected two image names 'name0 name1', got 1"),
        ("a.png sub/b.png d.png", r"pairs.txt:2: expected two image names 'name0 name1', got 3"),
        ("a.png ../x.jpg", r"pairs.txt:2: image name '../x.jpg' leaves the --images folder"),
        ("/etc/x.jpg a.png", r"pairs.txt:2: image name '/etc/x.jpg' is an absolute path"),
        ("a.png ./d.png", r"pairs.txt:2: image name './d.png' has an empty or '.' path component"),
        ("a.png a.png", r"pairs.txt:2: pairs an image with itself"),
        ("sub-b.png a.png", r"pairs.txt:2: 'sub-b.png' and 'sub/b.png' \(line 1\) would share the pair name"),
    ],
)
def test_malformed_pairs_lines_are_named(tmp_path, line, message):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"sub/b.png d.png\n{line}\n")
    with pytest.raises(ValueError, match=message):
        parse_pairs(pairs)


def test_cli_bad_pairs_file_fails_before_loading_a_model(scene, capsys):
    root, images, pairs = scene
    pairs.write_text("a.png sub/b.png\na.png ../../etc/passwd\n")
    code = main(
        [
            "match-pairs",
            "--images",
            str(images),
            "--pairs",
            str(pairs),
            "--features",
            str(root / "f.h5"),
            "--matches",
            str(root / "m.h5"),
            "--model",
            "/nonexistent/model",
            *TINY_ARGS,
        ]
    )
    assert code == 2
    assert "pairs.txt:2" in capsys.readouterr().err
    assert not (root / "f.h5").exists()


def test_cli_missing_and_broken_images_skip_their_pairs(scene, tiny_model_dir, capsys):
    root, images, pairs = scene
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    pairs.write_text("a.png sub/b.png\na.png missing.jpg\nbroken.jpg sub/b.png\n")
    args = [
        "match-pairs",
        "--images",
        str(images),
        "--pairs",
        str(pairs),
        "--features",
        str(root / "f.h5"),
        "--matches",
        str(root / "m.h5"),
        "--model",
        str(tiny_model_dir),
        *TINY_ARGS,
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "failed: missing.jpg" in captured.err and "pairs line 2" in captured.err
    assert "failed: broken.jpg" in captured.err and "pairs line 3" in captured.err
    assert "1 matched, 2 skipped" in captured.out
    assert list_h5_names(root / "m.h5") == ["a.png/sub-b.png"]
    Image.open(images / "a.png").save(images / "missing.jpg")  # fix one image: the rerun finishes its pair
    assert main(args) == 1
    assert sorted(list_h5_names(root / "m.h5")) == ["a.png/missing.jpg", "a.png/sub-b.png"]


def _keypoint_file(path: Path, groups: dict) -> Path:
    with h5py.File(path, "w") as f:
        for name, datasets in groups.items():
            for key, value in datasets.items():
                f.create_dataset(f"{name}/{key}", data=value)
    return path


def test_keypoints_from_another_features_file(scene, tiny_extractor_factory):
    root, images, pairs = scene
    pairs.write_text("a.png sub/b.png\n")
    rng = np.random.default_rng(0)
    kp_a = np.stack([rng.integers(0, 70, 25), rng.integers(0, 50, 25)], 1).astype(np.float16)  # hloc's as_half
    kp_b = np.stack([rng.integers(0, 40, 30), rng.integers(0, 60, 30)], 1).astype(np.float16)
    sp = _keypoint_file(
        root / "superpoint.h5",
        {
            "a.png": {"keypoints": kp_a, "scores": rng.random(25).astype(np.float16), "image_size": [70, 50]},
            "sub/b.png": {"keypoints": kp_b, "image_size": [40, 60]},
        },
    )
    extractor = tiny_extractor_factory()
    assert run(scene, extractor, keypoints=f"h5:{sp}").ok
    feats = root / "features.h5"
    assert np.array_equal(get_keypoints(feats, "a.png"), kp_a.astype(np.float32))
    with h5py.File(feats) as f:
        desc = np.asarray(f["a.png/descriptors"], dtype=np.float32)  # [D, N]
        assert f["sub/b.png/scores"].shape == (30,)
    # aligned convention at integer pixels = the bilinearly upsampled map there (spec §4), normalised
    fmap = extractor.extract(str(images / "a.png"))
    up = F.interpolate(fmap, size=(50, 70), mode="bilinear", align_corners=False)[0]
    expected = F.normalize(up[:, kp_a[:, 1].astype(int), kp_a[:, 0].astype(int)], dim=0).numpy()
    assert np.allclose(desc, expected, atol=2e-3)  # fp16 storage of unit vectors: ~5e-4 per entry
    m, _ = get_matches(root / "matches.h5", "a.png", "sub/b.png")
    assert (m[:, 0] < 25).all() and (m[:, 1] < 30).all()


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ({"keypoints": np.zeros((5, 3))}, r"numeric \[N, 2\] \(x, y\) array, got float64 \[5, 3\]"),
        ({"keypoints": np.zeros((5,))}, r"got float64 \[5\]"),
        ({"keypoints": np.full((2, 2), np.nan)}, "NaN"),
        ({"keypoints": [[80.0, 3.0]]}, r"keypoint 0 = \(80.0, 3.0\) is outside the 70x50 image"),
        ({"keypoints": np.zeros((4, 2)), "image_size": [140, 100]}, r"image_size \[140, 100\] is not the image's"),
        ({"keypoints": np.zeros((4, 2)), "scores": np.zeros(3)}, r"scores must be \[N\] = \[4\], got \[3\]"),
        ({"descriptors": np.zeros((4, 2))}, "no dataset 'a.png/keypoints'"),
        ({"keypoints/x": np.zeros((4, 2))}, "no dataset 'a.png/keypoints'"),
    ],
)
def test_bad_keypoint_files_fail_the_image_naming_the_file(scene, tiny_extractor_factory, datasets, message):
    root, _, pairs = scene
    pairs.write_text("a.png sub/b.png\n")
    kp = _keypoint_file(root / "kp.h5", {"a.png": datasets, "sub/b.png": {"keypoints": np.zeros((3, 2))}})
    summary = run(scene, tiny_extractor_factory(), keypoints=f"h5:{kp}")
    assert list(summary.failed) == ["a.png"] and summary.pairs_skipped == 1
    assert f"keypoints file {kp}, image a.png" in summary.failed["a.png"]
    assert re.search(message, summary.failed["a.png"])


def test_keypoint_spec_errors(scene, tiny_extractor_factory):
    extractor = tiny_extractor_factory()
    root = scene[0]
    with pytest.raises(ValueError, match="STRIDE must be a positive"):
        run(scene, extractor, keypoints="grid:0")
    with pytest.raises(ValueError, match="expected grid, grid:cell"):
        run(scene, extractor, keypoints="sift")
    with pytest.raises(FileNotFoundError, match="no such file"):
        run(scene, extractor, keypoints=f"h5:{root / 'nope.h5'}")
    (root / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.h5 is not a readable HDF5 file"):
        run(scene, extractor, keypoints=f"h5:{root / 'text.h5'}")


def test_grid_stride_keypoints(scene, tiny_extractor_factory):
    root = scene[0]
    summary = run(scene, tiny_extractor_factory(), keypoints="grid:16")
    assert summary.ok
    kps = get_keypoints(root / "features.h5", "a.png")  # 70x50 image: 4x3 blocks of 16 pixels
    assert kps.shape == (12, 2)
    assert sorted(set(kps[:, 0].tolist())) == [7.5, 23.5, 39.5, 55.5] and sorted(set(kps[:, 1].tolist())) == [
        7.5,
        23.5,
        39.5,
    ]


def test_features_from_a_store(scene, tiny_extractor_factory, tmp_path):
    from dift_fast.store import StoreJob, extract_to_store

    root, images, pairs = scene
    extractor = tiny_extractor_factory()
    store = tmp_path / "store"
    extract_to_store(
        StoreJob(inputs=[str(images)], out=str(store), config=extractor.config, store_dtype="fp32"), extractor
    )
    (images / "new.png").write_bytes((images / "a.png").read_bytes())  # not in the store: extracted on the fly
    pairs.write_text("a.png sub/b.png\nnew.png sub/deep/c.jpg\n")
    counting = CountingExtractor(extractor)
    summary = run(scene, counting, store=store)
    assert summary.ok and summary.images_from_store == 3 and counting.calls == ["new.png"]
    with h5py.File(root / "features.h5") as f:  # same pixels, same noise key, deterministic CPU: same descriptors
        assert np.array_equal(f["a.png/descriptors"][()], f["new.png/descriptors"][()])
    other = tiny_extractor_factory(ensemble_size=3)
    with pytest.raises(ValueError, match=r"--store .* other settings .*ensemble_size: store has 2, this run 3"):
        match_pairs(images, pairs, root / "f2.h5", root / "m2.h5", config=other.config, extractor=other, store=store)


def test_pair_names_and_dtypes_match_hloc():
    assert names_to_pair("a/b.jpg", "c.jpg") == "a-b.jpg/c.jpg"
    assert matches_dtype(32768) == np.int16 and matches_dtype(32769) == np.int32  # indices up to N1 - 1
    assert check_image_name("C:/x.jpg") and check_image_name("a\\b.jpg") and check_image_name("a:b.jpg") is None


def test_empty_pairs_file_is_an_error(scene, tiny_extractor_factory):
    scene[2].write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="lists no pairs"):
        run(scene, tiny_extractor_factory())


def test_identity_takes_the_export_dirs_graph_dtype(tmp_path, tiny_model_dir):
    """With --export-dir, the features' identity names the export's graph dtype (what runs), as the extractor's
    own identity will: an fp16 export configured as fp32 must not be refused once the extractor loads."""
    from dift_fast import DiftConfig
    from dift_fast.backend_options import OrtOptions
    from dift_fast.interop.match_pairs import _dift_identity

    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text('{"dtype": "fp16"}')
    config = DiftConfig(model=str(tiny_model_dir), backend="onnxruntime", device="cpu", dtype="fp32")
    with_dir, _ = _dift_identity(config, None, OrtOptions(export_dir=str(export)))
    without, _ = _dift_identity(config, None)
    assert with_dir["graph_dtype"] == "fp16" and without["graph_dtype"] == "fp32"
