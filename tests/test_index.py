"""FeatureIndex: flat exactness, IVF-PQ recall, labels, persistence, bad input; point finding; the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("faiss")

from dift_fast.faiss_utils import faiss_gpu_count
from dift_fast.index import FeatureIndex, find_points, pooled_descriptors
from dift_fast.matching import match_points

pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # conftest.py


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen)
    return centres[torch.randint(0, clusters, (n,), generator=gen)] + spread * torch.randn(n, dim, generator=gen)


def labels(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ar = torch.arange(n)
    return ar // 50, torch.stack([ar % 50 * 7, ar % 13 * 3], 1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_flat_index_is_exact_and_labels_round_trip(metric):
    x = clustered(3000, 32, 20, seed=1)
    ids, xy = labels(3000)
    index = FeatureIndex.build(x, ids, xy, kind="flat", metric=metric, device="cpu")
    q = clustered(40, 32, 20, seed=2)
    res = index.search(q, 8)
    if metric == "cosine":
        want_s, want_i = (F.normalize(q, dim=1) @ F.normalize(x, dim=1).T).topk(8, dim=1)
    else:
        want_s, want_i = torch.cdist(q.double(), x.double()).float().topk(8, dim=1, largest=False)
    assert torch.equal(res.image_ids, ids[want_i]) and torch.equal(res.xy, xy[want_i])
    torch.testing.assert_close(res.scores, want_s, rtol=1e-4, atol=1e-4)
    assert index.bytes_per_vector == 4 * 32 + 8


def test_ivfpq_recall_and_compression():
    both = clustered(8200, 32, 64, seed=3, spread=0.5)
    x, q = both[:8000], both[8000:]  # queries from the same clusters, not stored
    ids, xy = labels(8000)
    flat = FeatureIndex.build(x, ids, xy, device="cpu")
    ivf = FeatureIndex.build(x, ids, xy, kind="ivfpq", nlist=32, m=16, nprobe=8, train_size=2000, device="cpu")
    assert ivf.ntotal == 8000 and ivf.bytes_per_vector == 16 + 8 < flat.bytes_per_vector / 5
    truth, got = flat.search(q, 10), ivf.search(q, 10)
    key = lambda r: r.image_ids * 10**6 + r.xy[..., 0] * 1000 + r.xy[..., 1]  # noqa: E731
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(key(truth), key(got))) / (10 * len(q))
    assert recall > 0.55, recall  # 10-recall@10 of 16-byte codes of 32-d clustered vectors: ~0.7
    found_nearest = (key(got) == key(truth)[:, :1]).any(1).float().mean()
    assert found_nearest > 0.85, found_nearest  # 1-recall@10: the true nearest is among the 10 returned


def recall_at_10(truth, got) -> float:
    key = lambda r: r.image_ids * 10**6 + r.xy[..., 0] * 1000 + r.xy[..., 1]  # noqa: E731
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(key(truth), key(got))) / truth.xy[..., 0].numel()


def test_fp16_refine_lifts_recall_past_the_pq_codes():
    both = clustered(8200, 32, 64, seed=3, spread=0.5)
    x, q = both[:8000], both[8000:]
    ids, xy = labels(8000)
    truth = FeatureIndex.build(x, ids, xy, device="cpu").search(q, 10)
    opts = dict(kind="ivfpq", nlist=32, m=4, nprobe=8, train_size=2000, device="cpu")
    plain = FeatureIndex.build(x, ids, xy, **opts)
    refined = FeatureIndex.build(x, ids, xy, refine="fp16", refine_k_factor=8, **opts)
    assert refined.bytes_per_vector == 4 + 8 + 2 * 32 + 8  # PQ code, IVF id, float16 vector, label
    got = refined.search(q, 10)
    r_plain, r_refined = recall_at_10(truth, plain.search(q, 10)), recall_at_10(truth, got)
    # 4-byte codes of 32-d vectors: plain ~0.23; the same IVF-PQ shortlist (80) re-ranked in float16: ~0.91.
    assert r_plain < 0.5 and r_refined > 0.8 and r_refined > r_plain + 0.3, (r_plain, r_refined)
    assert (got.scores[:, :-1] >= got.scores[:, 1:]).all()  # re-ranked: cosine, best first
    hit = got.image_ids == truth.image_ids[:, :1]  # the labels come back through the IndexIDMap
    hit &= (got.xy == truth.xy[:, :1]).all(-1)
    assert hit.any(1).float().mean() > 0.95
    few = FeatureIndex.build(x[:300], ids[:300], xy[:300], nlist=4, nprobe=1, train_size=300, refine="fp16",
                             **{k: v for k, v in opts.items() if k not in ("nlist", "nprobe", "train_size")})
    res = few.search(q[:3], 200)  # one list of ~75: the rest of the 200 is missing, not garbage
    assert ((res.image_ids < 0) == res.scores.isnan()).all() and (res.image_ids < 0).any(1).all()
    assert ((res.image_ids >= 0) | (res.xy == -1).all(-1)).all()


def test_refine_options_are_checked():
    with pytest.raises(ValueError, match="kind='ivfpq'"):
        FeatureIndex(16, "flat", refine="fp16", device="cpu")
    with pytest.raises(ValueError, match="refine must be"):
        FeatureIndex(16, "ivfpq", m=4, refine="fp8", device="cpu")
    with pytest.raises(ValueError, match="refine_k_factor"):
        FeatureIndex(16, "ivfpq", m=4, refine="fp16", refine_k_factor=0.5, device="cpu")
    assert FeatureIndex(16, "ivfpq", m=4, refine="fp16", device="auto").device == "cpu"  # refine stays on CPU
    if faiss_gpu_count():
        with pytest.raises(ValueError, match="CPU only"):
            FeatureIndex(16, "ivfpq", m=4, refine="fp16", device="cuda")


def test_save_load_round_trip(tmp_path):
    x = clustered(3000, 32, 16, seed=5)
    ids, xy = labels(3000)
    ivf = FeatureIndex.build(x, ids, xy, kind="ivfpq", nlist=16, m=8, nbits=4, nprobe=4, device="cpu",
                             meta={"names": ["a", "b"]})
    path = ivf.save(tmp_path / "deep" / "g.index")
    back = FeatureIndex.load(path, device="cpu")
    assert (back.kind, back.nlist, back.m, back.nbits, back.nprobe, back.ntotal) == ("ivfpq", 16, 8, 4, 4, 3000)
    assert back.bytes_per_vector == 4 + 8  # 8 codes of 4 bits, and the id
    assert back.meta == {"names": ["a", "b"]}
    q = x[:25]
    a, b = ivf.search(q, 5), back.search(q, 5)
    assert torch.equal(a.image_ids, b.image_ids) and torch.equal(a.xy, b.xy)
    torch.testing.assert_close(a.scores, b.scores)
    assert [p.name for p in path.parent.iterdir()] == ["g.index"]  # no temporary left behind

    refined = FeatureIndex.build(x, ids, xy, kind="ivfpq", nlist=16, m=8, nbits=4, nprobe=4, device="cpu",
                                 refine="fp16", refine_k_factor=3)
    back = FeatureIndex.load(refined.save(tmp_path / "r.index"), device="cpu")
    assert (back.refine, back.refine_k_factor, back.nprobe) == ("fp16", 3.0, 4)
    assert back.bytes_per_vector == refined.bytes_per_vector == 4 + 8 + 2 * 32 + 8
    import faiss

    inner = faiss.downcast_index(back._index.index)  # IndexIDMap -> IndexRefine(IVF-PQ, float16 SQ)
    assert isinstance(inner, faiss.IndexRefine) and inner.k_factor == 3.0
    assert faiss.extract_index_ivf(back._index).nprobe == 4
    a, b = refined.search(q, 5), back.search(q, 5)
    assert torch.equal(a.image_ids, b.image_ids) and torch.equal(a.xy, b.xy)
    torch.testing.assert_close(a.scores, b.scores)


def test_bad_inputs_fail_clearly_and_change_nothing(tmp_path):
    index = FeatureIndex(16, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        index.search(torch.randn(2, 16), 1)
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        index.add(torch.randn(5, 17), 0)
    index.add(torch.randn(5, 16), 3, torch.tensor([[1, 2]] * 5))
    with pytest.raises(ValueError, match="k = 6 but the index holds 5"):
        index.search(torch.randn(1, 16), 6)
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        index.search(torch.randn(1, 8), 1)
    with pytest.raises(ValueError, match="x and y"):
        index.add(torch.randn(2, 16), 0, torch.tensor([[1, 70000], [0, 0]]))
    with pytest.raises(ValueError, match="image_ids"):
        index.add(torch.randn(2, 16), torch.tensor([1, 2, 3]))
    assert index.ntotal == 5  # the failed adds added nothing
    ivf = FeatureIndex(16, "ivfpq", m=4, device="cpu")
    with pytest.raises(ValueError, match="not trained"):
        ivf.add(torch.randn(3, 16), 0)
    with pytest.raises(ValueError, match="at least 256 training vectors"):
        ivf.train(torch.randn(100, 16))
    with pytest.raises(ValueError, match="must divide"):
        FeatureIndex(30, "ivfpq", m=8)
    with pytest.raises(ValueError, match="device"):
        FeatureIndex(16, device="tpu")
    if faiss_gpu_count() == 0:
        with pytest.raises(ValueError, match="no GPU support"):
            FeatureIndex(16, device="cuda")
    bogus = tmp_path / "x.index"
    bogus.write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a dift-fast index"):
        FeatureIndex.load(bogus)


def test_dense_and_pooled_labels():
    feat = torch.randn(8, 3, 4)
    index = FeatureIndex(8, device="cpu").add_dense(feat, image_id=7, image_size=(64, 48))
    res = index.search(feat[:, 2, 1], 1)  # cell (x=1, y=2): centre (1.5·16 − 0.5, 2.5·16 − 0.5)
    assert res.image_ids.item() == 7 and res.xy[0, 0].tolist() == [24, 40]
    pooled = FeatureIndex(8, device="cpu").add_pooled(torch.stack([feat, -feat]), [4, 9])
    res = pooled.search(pooled_descriptors(-feat), 2)
    assert res.image_ids[0].tolist() == [9, 4] and res.xy[0].tolist() == [[-1, -1], [-1, -1]]


def gallery(seed: int = 6) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Image 0 the query; image 3 the query shifted by 2 cells (plus noise); the rest unrelated."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(16, 9, 12, generator=gen)
    maps = [base] + [torch.randn(16, 9, 12, generator=gen) for _ in range(4)]
    maps[3] = torch.roll(base, 2, dims=2) + 0.1 * torch.randn(16, 9, 12, generator=gen)
    return torch.stack(maps), [(96, 72)] * 5


def test_find_points_retrieves_then_transfers_exactly():
    feats, sizes = gallery()
    index = FeatureIndex(16, device="cpu").add_pooled(feats, range(5))
    pts = torch.tensor([[20, 30], [50, 10]])
    hits = find_points(index, feats[0], sizes[0], pts, lambda i: (feats[i], sizes[i]), top_images=2, exclude=0)
    assert hits.image_ids[0].item() == 3 and 0 not in hits.image_ids.tolist()
    assert hits.points.shape == (2, 2, 2) and hits.scores.shape == (2, 2)
    want, cos = match_points(feats[0], feats[3], pts, sizes[0], sizes[3])
    assert torch.equal(hits.points[:, 0], want) and torch.equal(hits.scores[:, 0], cos)


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpu_count() == 0, reason="needs faiss with GPU support and a GPU")
def test_gpu_flat_index_equals_cpu():
    x = clustered(5000, 32, 16, seed=7)
    ids, xy = labels(5000)
    cpu = FeatureIndex.build(x, ids, xy, device="cpu")
    gpu = FeatureIndex.build(x, ids, xy, device="cuda")
    q = clustered(50, 32, 16, seed=8)
    a, b = cpu.search(q, 5), gpu.search(q, 5)
    assert torch.equal(a.image_ids, b.image_ids)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)


def test_cli_build_and_query(tmp_path, capsys):
    from dift_fast.cli import main
    from dift_fast.config import DiftConfig
    from dift_fast.io import save_features

    feats, sizes = gallery()
    names = [f"img{i}.jpg" for i in range(5)]
    ff = save_features(tmp_path / "f.safetensors", feats, names, sizes, DiftConfig.from_preset("spair"),
                       list(range(5)))
    assert main(["index", "build", str(ff), "--out", str(tmp_path / "g.index"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["index", "query", str(tmp_path / "g.index"), "--image", "img0.jpg", "--points", "20,30",
                 "--top", "2", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    want, _ = match_points(feats[0], feats[3], [[20, 30]], sizes[0], sizes[3])
    assert rows[0]["image"] == "img3.jpg" and [rows[0]["x"], rows[0]["y"]] == want[0].tolist()
    assert main(["index", "query", str(tmp_path / "g.index"), "--image", "img0.jpg", "--points", "200,30",
                 "--device", "cpu"]) == 2  # outside the 96x72 image
    assert "outside" in capsys.readouterr().err
    assert main(["index", "build", str(ff), "--out", str(tmp_path / "q.index"), "--type", "ivfpq"]) == 2
    assert not (tmp_path / "q.index").exists()
    assert main(["index", "build", str(ff), "--out", str(tmp_path / "d.index"), "--level", "dense",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    # The centre of cell (5, 3) of image 0 is pixel (43.5, 27.5) -> (44, 28); its twin is cell (7, 3) of image 3.
    assert main(["index", "query", str(tmp_path / "d.index"), "--image", "img0.jpg", "--points", "44,28",
                 "--top", "1", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["image"] == "img3.jpg" and [rows[0]["x"], rows[0]["y"]] == [60, 28]
    # Dense IVF-PQ (540 cells, 1-byte codes) with an fp16 refine: every list probed, the shortlist re-ranked.
    assert main(["index", "build", str(ff), "--out", str(tmp_path / "r.index"), "--level", "dense", "--type",
                 "ivfpq", "--refine", "fp16", "--device", "cpu"]) == 0
    assert "fp16 refine" in capsys.readouterr().out
    assert main(["index", "query", str(tmp_path / "r.index"), "--image", "img0.jpg", "--points", "44,28",
                 "--top", "1", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["image"] == "img3.jpg" and [rows[0]["x"], rows[0]["y"]] == [60, 28]
    assert main(["index", "build", str(ff), "--out", str(tmp_path / "f.index"), "--refine", "fp16"]) == 2
    assert "kind='ivfpq'" in capsys.readouterr().err and not (tmp_path / "f.index").exists()
