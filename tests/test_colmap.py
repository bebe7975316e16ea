"""features.h5 + matches.h5 from match-pairs imported into a COLMAP database; two-view geometry on a known scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("h5py")
pycolmap = pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install dift-fast[colmap])")

from hloc_readers import get_keypoints, get_matches  # noqa: E402

from dift_fast.cli import main  # noqa: E402
from dift_fast.extractor import FeatureBatch  # noqa: E402
from dift_fast.interop.colmap import import_into_colmap  # noqa: E402
from dift_fast.interop.match_pairs import match_pairs  # noqa: E402

SIZE = 256


def plane_texture(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:  # [..., 3] uint8
    """A band-limited random texture defined everywhere on the plane (a sum of sinusoids, 5-40 pixel waves)."""
    rng = np.random.default_rng(seed)
    k = 60
    freq, angle = rng.uniform(2 * np.pi / 40, 2 * np.pi / 5, k), rng.uniform(0, np.pi, k)
    phase, amp = rng.uniform(0, 2 * np.pi, (3, k)), rng.uniform(0.3, 1.0, (3, k))
    proj = np.cos(angle) * x[..., None] + np.sin(angle) * y[..., None]  # [..., k]
    out = np.stack([(amp[c] * np.cos(freq * proj + phase[c])).sum(-1) for c in range(3)], -1)
    out = (out - out.min()) / (out.max() - out.min())
    return (out * 255).round().astype(np.uint8)


def homography(deg: float, scale: float, tx: float, ty: float, px: float = 0.0, py: float = 0.0) -> np.ndarray:
    """Rotation and scale about the image centre, a shift and a little perspective (0-based pixel centres)."""
    c, a = SIZE / 2, np.deg2rad(deg)
    to_centre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    back = np.array([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1.0]])
    rs = np.array([[scale * np.cos(a), -scale * np.sin(a), 0], [scale * np.sin(a), scale * np.cos(a), 0], [px, py, 1]])
    return back @ rs @ to_centre


VIEWS = {
    "plane/view0.png": np.eye(3),
    "plane/view1.png": homography(5, 1.06, 7, -5, 2e-4),
    "plane/view2.png": homography(-4, 0.95, -6, 8, 0, 2e-4),
}


@pytest.fixture(scope="module")
def plane_scene(tmp_path_factory):
    """Three views of a textured plane, rendered exactly at pixel centres (view = texture ∘ H⁻¹)."""
    root = tmp_path_factory.mktemp("plane")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    for name, h in VIEWS.items():
        p = np.linalg.inv(h) @ np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        img = plane_texture((p[0] / p[2]).reshape(SIZE, SIZE), (p[1] / p[2]).reshape(SIZE, SIZE))
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / name)
    names = list(VIEWS)
    # the last pair is listed in the other order than the first view: its group is stored as view2/view1
    (root / "pairs.txt").write_text(f"{names[0]} {names[1]}\n{names[0]} {names[2]}\n{names[2]} {names[1]}\n")
    return root


class PatchFeatures:
    """A stand-in for DIFT with geometrically meaningful features: 5x5 colour patches on a stride-4 grid.

    tiny-random's features are random, so they cannot show that geometry survives the files; this extractor's do,
    and everything after extraction (keypoints, descriptor sampling, matching, HDF5 files, import) is the real code.
    """

    def __init__(self, config):
        self.config, self.device, self.is_tiny = config, torch.device("cpu"), False

    def extract_prepared(self, prepared, *args, **kwargs):
        maps = []
        for p in prepared:
            x = F.avg_pool2d(p.pixels[None], 4)  # [1, 3, 64, 64]
            patches = F.unfold(x, 5, padding=2).view(75, *x.shape[2:])
            maps.append(patches - patches.mean(0, keepdim=True))
        return FeatureBatch(
            torch.stack(maps), [p.name for p in prepared], [p.original_size for p in prepared], [0] * len(prepared)
        )


@pytest.fixture(scope="module")
def plane_files(plane_scene, tiny_model_dir):
    """features.h5 and matches.h5 of the plane scene, written by the real match-pairs code."""
    from dift_fast.config import DiftConfig

    root = plane_scene
    config = DiftConfig(model=str(tiny_model_dir), image_size=(SIZE, SIZE), device="cpu")
    summary = match_pairs(
        root / "images",
        root / "pairs.txt",
        root / "features.h5",
        root / "matches.h5",
        config=config,
        extractor=PatchFeatures(config),
    )
    assert summary.ok and summary.pairs_matched == 3
    return root


def test_two_view_geometry_passes_on_a_known_plane(plane_files):
    root = plane_files
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = 0
    result = import_into_colmap(
        root / "colmap.db",
        root / "images",
        root / "features.h5",
        root / "matches.h5",
        root / "pairs.txt",
        camera_mode="SINGLE",
        verify_options=options,
    )
    assert result.num_pairs == 3 and result.num_verified_pairs == 3 and not result.missing
    names = list(VIEWS)
    with pycolmap.Database.open(root / "colmap.db") as db:
        ids = result.image_ids
        for name in names:  # COLMAP's keypoints are hloc's + 0.5 (its origin is the top-left pixel's corner)
            assert np.array_equal(db.read_keypoints(ids[name])[:, :2], get_keypoints(root / "features.h5", name) + 0.5)
        for a, b in [(0, 1), (0, 2), (2, 1)]:
            na, nb = names[a], names[b]
            raw = db.read_matches(ids[na], ids[nb])
            assert np.array_equal(raw, get_matches(root / "matches.h5", na, nb)[0])
            geometry = db.read_two_view_geometry(ids[na], ids[nb])
            inliers = geometry.inlier_matches
            assert len(inliers) > 0.8 * len(raw) > 1000  # most matches survive RANSAC
            # and they follow the true homography: within the 4-pixel cell quantisation of the features
            k0 = db.read_keypoints(ids[na])[inliers[:, 0], :2] - 0.5
            k1 = db.read_keypoints(ids[nb])[inliers[:, 1], :2] - 0.5
            h = VIEWS[nb] @ np.linalg.inv(VIEWS[na])
            p = h @ np.c_[k0, np.ones(len(k0))].T
            err = np.linalg.norm((p[:2] / p[2]).T - k1, axis=1)
            assert np.median(err) < 2.5 and (err < 4).mean() > 0.95


def test_import_refuses_existing_databases_and_foreign_images(plane_files, tmp_path):
    root = plane_files
    db = tmp_path / "exists.db"
    db.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match=r"exists\.db exists"):
        import_into_colmap(db, root / "images", root / "features.h5", root / "matches.h5", root / "pairs.txt")
    assert db.read_bytes() == b"user data"
    other = tmp_path / "images" / "plane"
    other.mkdir(parents=True)
    for name in VIEWS:  # same names, other size: the keypoints would not belong to these files
        Image.new("RGB", (SIZE // 2, SIZE // 2)).save(tmp_path / "images" / name)
    with pytest.raises(ValueError, match=r"image_size \(256, 256\) but the file .* is 128x128"):
        import_into_colmap(
            tmp_path / "new.db", tmp_path / "images", root / "features.h5", root / "matches.h5", root / "pairs.txt"
        )


def test_cli_output_of_tiny_random_imports(tmp_path, tiny_model_dir):
    """The newcomer path, offline: photos + pairs -> match-pairs -> COLMAP database (features are random here)."""
    images = tmp_path / "photos"
    images.mkdir()
    examples = Path(__file__).resolve().parents[1] / "examples"
    for name in ("cat.jpg", "cat_turned.jpg"):
        (images / name).write_bytes((examples / name).read_bytes())
    (tmp_path / "pairs.txt").write_text("cat.jpg cat_turned.jpg\n")
    code = main(
        [
            "match-pairs",
            "--images",
            str(images),
            "--pairs",
            str(tmp_path / "pairs.txt"),
            "--features",
            str(tmp_path / "features.h5"),
            "--matches",
            str(tmp_path / "matches.h5"),
            "--model",
            str(tiny_model_dir),
            "--ensemble-size",
            "2",
            "--image-size",
            "64x48",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    result = import_into_colmap(
        tmp_path / "db.db",
        images,
        tmp_path / "features.h5",
        tmp_path / "matches.h5",
        tmp_path / "pairs.txt",
        verify=False,
    )
    m, _ = get_matches(tmp_path / "matches.h5", "cat.jpg", "cat_turned.jpg")
    assert result.num_pairs == 1 and result.num_matches == len(m) > 0
    assert result.num_keypoints == 2 * len(get_keypoints(tmp_path / "features.h5", "cat.jpg"))
