"""Import hloc-style ``features.h5`` / ``matches.h5`` into a COLMAP database with pycolmap.

Does what hloc's ``reconstruction.main`` does before mapping: ``pycolmap.import_images`` (cameras, rigs, frames,
images from the image files), keypoints (+0.5: hloc's keypoints have the top-left pixel's centre at (0, 0),
COLMAP's at (0.5, 0.5)), raw matches of each pair once (a reversed pair reads the stored one, flipped), and then
``pycolmap.verify_matches`` (two-view geometry by RANSAC). Needs ``pip install dift-fast[colmap]``; tested with
pycolmap 4.2.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .h5journal import import_h5py
from .hloc import names_to_pair, names_to_pair_old, parse_pairs

__all__ = ["ColmapImport", "import_into_colmap", "import_pycolmap"]


def import_pycolmap() -> Any:
    """pycolmap, or a :class:`~dift_fast.extras.MissingExtraError` naming the extra that installs it."""
    from ..extras import import_extra

    return import_extra("pycolmap", "COLMAP import")


@dataclass
class ColmapImport:
    """What :func:`import_into_colmap` wrote."""

    database: Path
    image_ids: dict[str, int]  # image name -> COLMAP image id
    num_keypoints: int
    num_pairs: int  # pairs whose raw matches were written
    num_matches: int
    num_verified_pairs: int  # pairs with a two-view geometry (0 without verification)
    missing: list[str]  # images named in the pairs file but absent from the features file (their pairs skipped)


def _find_pair(fd: Any, name0: str, name1: str) -> tuple[str, bool] | None:
    """hloc's ``find_pair``: the stored group of a pair and whether it is stored reversed."""
    for pair, reverse in (
        (names_to_pair(name0, name1), False),
        (names_to_pair(name1, name0), True),
        (names_to_pair_old(name0, name1), False),
        (names_to_pair_old(name1, name0), True),
    ):
        if pair in fd:
            return pair, reverse
    return None


def read_matches(fd: Any, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """hloc's ``get_matches`` on an open matches file: ``([K, 2] index pairs (image0, image1), [K] scores)``."""
    found = _find_pair(fd, name0, name1)
    if found is None:
        raise KeyError(f"pair ({name0}, {name1}) is not in {fd.filename}; match it first (dift-fast match-pairs)")
    pair, reverse = found
    m0 = np.asarray(fd[pair]["matches0"])
    scores = np.asarray(fd[pair]["matching_scores0"])
    idx = np.flatnonzero(m0 != -1)
    matches = np.stack([idx, m0[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    return matches, scores[idx]


def import_into_colmap(
    database_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    features_h5: str | os.PathLike,
    matches_h5: str | os.PathLike,
    pairs: str | os.PathLike,
    *,
    camera_mode: str = "AUTO",
    min_match_score: float | None = None,
    verify: bool = True,
    verify_options: Any = None,
) -> ColmapImport:
    """Create a COLMAP database from the images, keypoints and matches of a ``dift-fast match-pairs`` run.

    Args:
        database_path: the database to create (an existing file is refused, never overwritten).
        image_dir: the ``--images`` folder (COLMAP reads each image's size and EXIF from it).
        features_h5, matches_h5: the files ``dift-fast match-pairs`` wrote (or any hloc-layout files).
        pairs: the pairs file; each pair is imported once, in either order.
        camera_mode: pycolmap ``CameraMode`` name: ``AUTO``, ``SINGLE``, ``PER_FOLDER`` or ``PER_IMAGE``.
        min_match_score: keep matches with a score above this (as hloc's ``min_match_score``).
        verify: run ``pycolmap.verify_matches`` (RANSAC two-view geometry) afterwards, as hloc does.
        verify_options: a ``pycolmap.TwoViewGeometryOptions`` (default: pycolmap's).

    Returns:
        A :class:`ColmapImport`; run ``pycolmap.incremental_mapping(database, image_dir, out_dir)`` next.
    """
    pycolmap = import_pycolmap()
    h5py = import_h5py()
    database_path, image_dir = Path(database_path), Path(image_dir)
    if database_path.exists():
        raise FileExistsError(f"COLMAP database {database_path} exists; choose a new path (it is left untouched)")
    if camera_mode not in pycolmap.CameraMode.__members__:
        raise ValueError(f"camera_mode must be one of {list(pycolmap.CameraMode.__members__)}, got {camera_mode!r}")
    pair_list = parse_pairs(pairs)
    with h5py.File(features_h5, "r") as feats:
        names = list(dict.fromkeys(n for p in pair_list for n in (p.name0, p.name1)))
        missing = [n for n in names if n not in feats or "keypoints" not in feats[n]]
        names = [n for n in names if n not in missing]
        if not names:
            raise ValueError(f"none of the images of {pairs} is in {features_h5}")
        database_path.parent.mkdir(parents=True, exist_ok=True)
        with pycolmap.Database.open(database_path):  # creates the empty database import_images expects
            pass
        pycolmap.import_images(
            database_path, image_dir, pycolmap.CameraMode.__members__[camera_mode], image_names=names
        )
        with pycolmap.Database.open(database_path) as db:
            ids = {image.name: image.image_id for image in db.read_all_images()}
            lost = [n for n in names if n not in ids]
            if lost:
                raise ValueError(f"COLMAP could not import {len(lost)} images from {image_dir}: {lost[:5]}")
            num_keypoints = 0
            for name in names:
                image = db.read_image(ids[name])
                camera = db.read_camera(image.camera_id)
                size = tuple(int(v) for v in np.asarray(feats[name]["image_size"]).ravel())
                if size != (camera.width, camera.height):
                    raise ValueError(
                        f"{features_h5}: image {name} has image_size {size} but the file in {image_dir} "
                        f"is {camera.width}x{camera.height}; the features belong to another image"
                    )
                keypoints = np.asarray(feats[name]["keypoints"], dtype=np.float32) + 0.5  # COLMAP origin
                db.write_keypoints(ids[name], keypoints)
                num_keypoints += len(keypoints)
            num_pairs = num_matches = 0
            done: set[frozenset[int]] = set()
            kept_pairs = []
            with h5py.File(matches_h5, "r") as fd:
                for p in pair_list:
                    if p.name0 in missing or p.name1 in missing:
                        continue
                    key = frozenset((ids[p.name0], ids[p.name1]))
                    if key in done:
                        continue
                    done.add(key)
                    matches, scores = read_matches(fd, p.name0, p.name1)
                    if min_match_score is not None:
                        matches = matches[scores > min_match_score]
                    db.write_matches(ids[p.name0], ids[p.name1], matches.astype(np.uint32))
                    kept_pairs.append(f"{p.name0} {p.name1}")
                    num_pairs += 1
                    num_matches += len(matches)
    num_verified = 0
    if verify and kept_pairs:
        with tempfile.TemporaryDirectory() as tmp:
            pairs_txt = Path(tmp) / "pairs.txt"
            pairs_txt.write_text("\n".join(kept_pairs) + "\n")
            options = verify_options if verify_options is not None else pycolmap.TwoViewGeometryOptions()
            pycolmap.verify_matches(database_path, pairs_txt, options=options)
        with pycolmap.Database.open(database_path) as db:
            num_verified = db.num_verified_image_pairs()
    return ColmapImport(database_path, ids, num_keypoints, num_pairs, num_matches, num_verified, missing)
