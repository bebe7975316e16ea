"""An exact (flat) index sharded over several GPUs that, unlike faiss' own, takes any number of ``add`` calls.

faiss' multi-GPU copy of a flat index (``index_cpu_to_gpus_list`` / ``index_cpu_to_all_gpus`` with ``shard=True``)
is an ``IndexShards(successive_ids=True)``: a vector's id is its position, shifted per shard, so it refuses a
second ``add`` ("when adding to IndexShards with successive_ids, only add() in a single pass is supported") and
ids given with the vectors. A gallery is added image by image, so here every shard is an ``IndexIDMap2`` over its
own flat index and an ``IndexShards(successive_ids=False)`` spreads each ``add_with_ids`` over the shards in
contiguous slices and merges searches by score; the ids (the packed labels) live in the shards. faiss' GPU-to-CPU
cloner cannot merge such shards back into one index (it merges flat and IVF shards only), so :func:`index_to_cpu`
does it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..faiss_utils import gpu_resources, import_faiss

__all__ = ["copy_flat_into", "gather_flat", "index_to_cpu", "shard_flat", "sharded_flat"]

_CHUNK = 65536  # vectors copied at a time


def _to_gpu(index: Any, gpu: int) -> Any:
    """A copy of CPU ``index`` on GPU ``gpu`` (an ``IndexIDMap2`` over a flat index stays one, its flat on the GPU)."""
    return import_faiss().index_cpu_to_gpu(gpu_resources(gpu), gpu, index)


def _to_cpu(index: Any) -> Any:
    return import_faiss().index_gpu_to_cpu(index)


def sharded_flat(dim: int, metric_type: int, n_shards: int, place: Any = None) -> Any:
    """An empty ``IndexShards(successive_ids=False)`` of ``n_shards`` ``IndexIDMap2(IndexFlat(dim, metric_type))``.

    ``place(i, index)`` puts shard ``i`` where it runs (default: left on the CPU).
    """
    faiss = import_faiss()
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    shards = faiss.IndexShards(dim, True, False)  # threaded; ids stored in the shards, never shifted
    for i in range(n_shards):
        shard = faiss.IndexIDMap2(faiss.IndexFlat(dim, metric_type))
        shards.add_shard(shard if place is None else place(i, shard))  # the wrapper keeps the shard alive
    return shards


def _flat_contents(idmap: Any) -> tuple[Any, Any]:
    """(vectors [n, d] float32, ids [n] int64) of a CPU ``IndexIDMap2`` over a flat index, in stored order."""
    faiss = import_faiss()
    idmap = faiss.downcast_index(idmap)
    n = int(idmap.ntotal)
    vectors = faiss.downcast_index(idmap.index).reconstruct_n(0, n)
    return vectors, faiss.vector_to_array(idmap.id_map)


def copy_flat_into(index: Any, cpu_idmap: Any) -> Any:
    """Add the vectors and ids of CPU ``IndexIDMap2(IndexFlat)`` ``cpu_idmap`` to ``index``; returns ``index``."""
    vectors, ids = _flat_contents(cpu_idmap)
    for start in range(0, len(ids), _CHUNK):
        index.add_with_ids(vectors[start : start + _CHUNK], ids[start : start + _CHUNK])
    return index


def shard_flat(cpu_idmap: Any, gpus: Sequence[int]) -> Any:
    """``cpu_idmap`` (``IndexIDMap2(IndexFlat)``) as a flat index sharded over ``gpus``, open to further adds."""
    faiss = import_faiss()
    flat = faiss.downcast_index(faiss.downcast_index(cpu_idmap).index)
    shards = sharded_flat(flat.d, flat.metric_type, len(gpus), lambda i, shard: _to_gpu(shard, gpus[i]))
    return copy_flat_into(shards, cpu_idmap)


def gather_flat(shards: Any, to_cpu: Any = None) -> Any:
    """One CPU ``IndexIDMap2(IndexFlat)`` holding every shard's vectors and ids (shard by shard)."""
    faiss = import_faiss()
    shards = faiss.downcast_index(shards)
    parts = [faiss.downcast_index(shards.at(i)) for i in range(shards.count())]
    parts = [p if to_cpu is None else to_cpu(p) for p in parts]
    flat = faiss.downcast_index(faiss.downcast_index(parts[0]).index)
    out = faiss.IndexIDMap2(faiss.IndexFlat(flat.d, flat.metric_type))
    for part in parts:
        copy_flat_into(out, part)
    return out


def index_to_cpu(index: Any) -> Any:
    """A CPU copy of a GPU index: this module's flat shards gathered here, anything else by faiss."""
    faiss = import_faiss()
    top = faiss.downcast_index(index)
    if (
        isinstance(top, faiss.IndexShards)
        and top.count()
        and isinstance(faiss.downcast_index(top.at(0)), faiss.IndexIDMap2)
    ):
        return gather_flat(top, _to_cpu)
    return _to_cpu(index)
