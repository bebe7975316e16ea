"""``dift-fast index``: indexes from a feature store, query images outside the index, --top k a prefix of k+1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("faiss", reason="the index needs faiss (pip install 'dift-fast[faiss]')")

from dift_fast.cli import main
from dift_fast.index import FeatureIndex
from dift_fast.matching import match_points

TINY = ["--ensemble-size", "1", "--image-size", "64x48", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # conftest.py


def near_ties(n_groups: int = 4, copies: int = 6, dim: int = 16) -> torch.Tensor:
    """Groups of exact copies plus copies one float32 ulp away: the scores tie exactly or within rounding."""
    gen = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(n_groups, dim, generator=gen), dim=1).repeat_interleave(copies, 0)
    bumped = base.clone()
    bumped[1::3, 0] = torch.nextafter(bumped[1::3, 0], torch.tensor(2.0))  # one ulp
    return torch.cat([base, bumped])


@pytest.mark.parametrize(("kind", "metric"), [("flat", "cosine"), ("flat", "l2"), ("ivfpq", "cosine")])
def test_top_k_is_a_prefix_of_top_k_plus_1_with_ties(kind, metric):
    vectors = near_ties()
    n = len(vectors)
    ids = torch.arange(n) // 4
    xy = torch.stack([torch.arange(n) % 4, torch.zeros(n, dtype=torch.long)], 1)
    index = FeatureIndex(vectors.shape[1], kind, metric=metric, m=4, nbits=4, nlist=2, nprobe=2, device="cpu")
    if kind == "ivfpq":
        index.train(vectors)
    index.add(vectors, ids, xy)
    queries = torch.cat([vectors[:3], vectors[:3] + 1e-3 * torch.randn(3, vectors.shape[1])])
    previous = None
    for k in range(1, n + 1):
        found = index.search(queries, k)
        labels = torch.stack([found.image_ids, found.xy[..., 0]], -1)
        if previous is not None:
            assert torch.equal(labels[:, :-1], previous), f"k={k}"
        previous = labels
    # equal scores are ordered by label: image id, then y, then x
    full = index.search(queries, n)
    for row in range(len(queries)):
        s, i, x = full.scores[row], full.image_ids[row], full.xy[row, :, 0]
        for j in range(n - 1):
            if s[j] == s[j + 1]:
                assert (i[j], x[j]) < (i[j + 1], x[j + 1])


def _photos(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _rows(capsys):
    return json.loads(capsys.readouterr().out)


def test_build_from_a_store_and_query_it(tiny_model_dir, tmp_path, capsys):
    from dift_fast.store import FeatureStore

    photos = _photos(tmp_path / "photos", [f"p{i}.png" for i in range(4)])
    store = tmp_path / "store"
    assert main(["extract", str(photos), "--out", str(store), "--model", str(tiny_model_dir), *TINY,
                 "--no-progress"]) == 0
    index = tmp_path / "s.index"
    assert main(["index", "build", "--store", str(store), "--out", str(index), "--device", "cpu"]) == 0
    assert "from store" in capsys.readouterr().out
    fs = FeatureStore.open(store)
    meta = FeatureIndex.load(index, device="cpu").meta
    assert meta["identity"] == fs.meta["identity"] and meta["names"] == sorted(fs.names())
    assert meta["source"]["kind"] == "store"
    assert main(["index", "query", str(index), "--image", "p0.png", "--points", "10,20", "--top", "3", "--json",
                 "--device", "cpu"]) == 0
    rows = _rows(capsys)
    assert [r["rank"] for r in rows] == [1, 2, 3] and "p0.png" not in {r["image"] for r in rows}
    maps = {n: fs.get(n).float() for n in fs.names()}
    for r in rows:
        want, cos = match_points(maps["p0.png"], maps[r["image"]], [[10, 20]], (64, 48), (64, 48))
        assert [r["x"], r["y"]] == want[0].tolist() and r["score"] == pytest.approx(float(cos[0]), abs=1e-6)
    # retrieval order: pooled cosine (mean of normalised cells, normalised), best first
    pooled = {n: F.normalize(F.normalize(m, dim=0).mean((1, 2)), dim=0) for n, m in maps.items()}
    scores = [float(pooled["p0.png"] @ pooled[r["image"]]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_build_from_a_store_skips_a_damaged_image_and_says_so(tiny_model_dir, tmp_path, capsys):
    from dift_fast.store import FeatureStore

    photos = _photos(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    store = tmp_path / "store"
    assert main(["extract", str(photos), "--out", str(store), "--model", str(tiny_model_dir), *TINY,
                 "--no-progress"]) == 0
    path = FeatureStore.open(store).path("b.png")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # one flipped byte in the features: the checksum no longer matches
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["index", "build", "--store", str(store), "--out", str(tmp_path / "i.index"), "--level", "dense",
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "skipped: b.png" in err and "1 damaged image(s)" in err
    index = FeatureIndex.load(tmp_path / "i.index", device="cpu")
    assert index.meta["skipped"] == ["b.png"]
    found = index.search(torch.randn(5, index.dim), index.ntotal)
    assert set(found.image_ids.unique().tolist()) == {0, 2}  # a.png and c.png: every cell, none of b.png


def _feature_file(tiny_model_dir, tmp_path, names):
    photos = _photos(tmp_path / "photos", names)
    out = tmp_path / "f.safetensors"
    assert main(["extract", *[str(photos / n) for n in names], "--out", str(out), "--model", str(tiny_model_dir),
                 *TINY, "--no-progress"]) == 0
    return out


def test_query_an_image_outside_the_index_extracts_it_with_the_index_settings(tiny_model_dir, tmp_path, capsys):
    from dift_fast import DiftConfig, DiftExtractor
    from dift_fast.io import load_features

    ff = _feature_file(tiny_model_dir, tmp_path, ["g0.png", "g1.png", "g2.png"])
    outside = _photos(tmp_path / "new", ["q.png"], seed=7) / "q.png"
    index = tmp_path / "g.index"
    assert main(["index", "build", str(ff), "--out", str(index), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["index", "query", str(index), "--image", str(outside), "--points", "30,12", "--top", "2",
                 "--json", "--device", "cpu"]) == 0
    rows = _rows(capsys)
    gallery = load_features(ff)
    config = DiftConfig.from_dict(gallery.config.to_dict())
    query = DiftExtractor.from_pretrained(config=config).extract([str(outside)])[0]
    for r in rows:
        target = gallery.features[gallery.index_of(r["image"])]
        want, _ = match_points(query, target, [[30, 12]], (64, 48), (64, 48))
        assert [r["x"], r["y"]] == want[0].tolist()
    assert len(rows) == 2


def test_query_outside_the_index_is_refused_with_another_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from dift_fast.extractor import DiftExtractor

    ff = _feature_file(tiny_model_dir, tmp_path, ["g0.png", "g1.png"])
    outside = _photos(tmp_path / "new", ["q.png"], seed=7) / "q.png"
    index = tmp_path / "g.index"
    assert main(["index", "build", str(ff), "--out", str(index), "--device", "cpu"]) == 0
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    from safetensors.torch import load_file, save_file

    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state = {k: v + 0.01 for k, v in state.items()}  # a fine-tune with the same shapes
    save_file(state, str(weights))
    monkeypatch.setattr(DiftExtractor, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded a model that cannot match the index")))
    capsys.readouterr()
    assert main(["index", "query", str(index), "--image", str(outside), "--points", "3,3", "--model", str(other),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot be extracted here as the index's features were" in err and "model_sha256" in err
    assert main(["index", "query", str(index), "--image", str(tmp_path / "nope.png"), "--points", "3,3",
                 "--device", "cpu"]) == 2
    assert "not an image file" in capsys.readouterr().err


def test_cli_top_k_rows_are_a_prefix_of_top_k_plus_1(tiny_model_dir, tmp_path, capsys):
    """Three copies of one photo under three names tie exactly; rows stay a prefix as --top grows."""
    photos = _photos(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    for name in ("a2.png", "a3.png"):
        shutil.copy(photos / "a.png", photos / name)
    names = ["a.png", "b.png", "a2.png", "c.png", "a3.png"]
    ff = tmp_path / "f.safetensors"
    assert main(["extract", *[str(photos / n) for n in names], "--out", str(ff), "--model", str(tiny_model_dir),
                 *TINY, "--no-progress"]) == 0
    for level in ("image", "dense"):
        index = tmp_path / f"{level}.index"
        assert main(["index", "build", str(ff), "--out", str(index), "--level", level, "--device", "cpu"]) == 0
        capsys.readouterr()
        previous = []
        for top in range(1, 5):
            assert main(["index", "query", str(index), "--image", "b.png", "--points", "5,5", "40,30", "--top",
                         str(top), "--json", "--device", "cpu"]) == 0
            rows = _rows(capsys)
            per_point = [[(r["image"], r["x"], r["y"]) for r in rows if r["point"] == p] for p in ([5, 5], [40, 30])]
            for mine, before in zip(per_point, previous):
                assert mine[:-1] == before, (level, top)
            previous = per_point
        images = [img for img, _, _ in previous[0]]
        if level == "image":  # the three copies tie: in id order
            copies = [n for n in images if n.startswith("a")]
            assert copies == ["a.png", "a2.png", "a3.png"][: len(copies)]
