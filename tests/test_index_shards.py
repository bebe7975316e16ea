"""A flat index sharded over several devices takes many ``add`` calls and finds what one flat index finds.

faiss-cpu has ``IndexShards``: the sharding is tested with CPU shards; on GPUs only where the shards live changes
(``-m gpu`` runs it on the GPUs faiss sees).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss", reason="faiss is an optional extra (pip install 'dift-fast[faiss]')")

from dift_fast.faiss_utils import faiss_gpu_count  # noqa: E402
from dift_fast.index import FeatureIndex, feature_index, shards  # noqa: E402


def gallery(n_images: int = 5, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, 3 + i % 3, 4, generator=g) for i in range(n_images)]  # maps of unequal sizes


def test_faiss_successive_id_shards_refuse_a_second_add():
    """The defect: faiss' own flat shards (what index_cpu_to_gpus_list makes of a flat index) add once only."""
    index = faiss.IndexShards(8, True, True)
    for _ in range(2):
        index.add_shard(faiss.IndexFlatL2(8))
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    index.add(x)
    with pytest.raises(RuntimeError, match="single pass"):
        index.add(x)


@pytest.mark.parametrize("n_shards", [2, 3])
def test_sharded_flat_takes_many_adds_and_equals_the_flat_index(n_shards):
    rng = np.random.default_rng(1)
    dim = 12
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    sharded = shards.sharded_flat(dim, faiss.METRIC_INNER_PRODUCT, n_shards)
    for n in (7, 1, 30, 2):  # one add per image, of any size (fewer rows than shards too)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        ids = rng.integers(0, 2**40, n).astype(np.int64)
        flat.add_with_ids(x, ids)
        sharded.add_with_ids(x, ids)
    assert sharded.ntotal == flat.ntotal == 40
    counts = [faiss.downcast_index(sharded.at(i)).ntotal for i in range(n_shards)]
    assert sum(counts) == 40 and min(counts) > 0  # every shard holds part of the gallery
    q = rng.standard_normal((9, dim)).astype(np.float32)
    d_ref, i_ref = flat.search(q, 5)
    d, i = sharded.search(q, 5)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-6)  # the same dot products, summed in the same order
    gathered = shards.gather_flat(sharded)
    assert gathered.ntotal == 40
    _, i_back = gathered.search(q, 5)
    np.testing.assert_array_equal(i_back, i_ref)


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """FeatureIndex on 'two GPUs' whose shards are CPU copies: everything but the device placement is real."""
    monkeypatch.setattr(feature_index, "_resolve_gpus", lambda device: () if device == "cpu" else (0, 1))
    monkeypatch.setattr(shards, "_to_gpu", lambda index, gpu: faiss.clone_index(index))
    monkeypatch.setattr(shards, "_to_cpu", faiss.clone_index)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_feature_index_on_several_devices_adds_image_by_image(two_fake_gpus, tmp_path, metric):
    maps = gallery()
    ref = FeatureIndex(16, metric=metric, device="cpu")
    multi = FeatureIndex(16, metric=metric, device="all")
    assert multi.device == "2 GPUs (sharded)"
    for image_id, feat in enumerate(maps):  # a dense gallery: one add per image
        ref.add_dense(feat, image_id, (64, 48))
        multi.add_dense(feat, image_id, (64, 48))
    assert multi.ntotal == ref.ntotal == sum(f.shape[1] * f.shape[2] for f in maps)
    queries = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))
    want, got = ref.search(queries, k=4), multi.search(queries, k=4)
    assert torch.equal(got.image_ids, want.image_ids) and torch.equal(got.xy, want.xy)
    torch.testing.assert_close(got.scores, want.scores)
    multi.save(tmp_path / "g.index")  # gathered from the shards into one index
    for device in ("cpu", "all"):
        back = FeatureIndex.load(tmp_path / "g.index", device=device)
        res = back.search(queries, k=4)
        assert back.ntotal == ref.ntotal and torch.equal(res.image_ids, want.image_ids)
        torch.testing.assert_close(res.scores, want.scores)
    back.add_dense(maps[0], 99, (64, 48))  # a loaded sharded index still takes adds
    assert back.ntotal == ref.ntotal + maps[0].shape[1] * maps[0].shape[2]


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpu_count() < 2, reason="needs faiss with GPU support and two GPUs")
def test_feature_index_sharded_over_real_gpus(tmp_path):
    maps = gallery()
    ref, multi = FeatureIndex(16, device="cpu"), FeatureIndex(16, device="all")
    for image_id, feat in enumerate(maps):
        ref.add_dense(feat, image_id)
        multi.add_dense(feat, image_id)
    queries = torch.randn(6, 16)
    assert torch.equal(multi.search(queries, k=4).image_ids, ref.search(queries, k=4).image_ids)
    multi.save(tmp_path / "g.index")
    assert FeatureIndex.load(tmp_path / "g.index", device="cpu").ntotal == ref.ntotal
