"""FAISS glue: optional import, GPU detection, and an exact k-nearest-neighbour search with a torch twin.

faiss is an optional dependency (``pip install dift-fast[faiss]``, or faiss-gpu from conda for GPU indexes).
Nothing here imports it at module import time.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["faiss_available", "faiss_gpu_count", "import_faiss", "knn", "knn_torch"]


@functools.lru_cache(maxsize=1)
def _faiss_or_error() -> tuple[Any, Exception | None]:
    from .extras import MissingExtraError, import_extra

    try:
        return import_extra("faiss", "FAISS indexes and search"), None
    except MissingExtraError as err:
        return None, err


def import_faiss() -> Any:
    """The faiss module, or a :class:`~dift_fast.extras.MissingExtraError` naming the extra (cached)."""
    faiss, error = _faiss_or_error()
    if faiss is None:
        raise error
    return faiss


def faiss_available() -> bool:
    """True when faiss can be imported."""
    return _faiss_or_error()[0] is not None


def faiss_gpu_count() -> int:
    """GPUs faiss can use: 0 without faiss, with a CPU-only build, or without a GPU."""
    faiss = _faiss_or_error()[0]
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


@functools.cache
def gpu_resources(device: int) -> Any:
    """One ``StandardGpuResources`` per GPU, shared by every index on it (they hold scratch memory)."""
    return import_faiss().StandardGpuResources()


def _metric(faiss: Any, metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def knn_torch(
    base: torch.Tensor,  # [M, C] float32
    query: torch.Tensor,  # [N, C] float32
    k: int,
    metric: Literal["cosine", "l2"] = "cosine",
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, k] score, [N, k] long
    """Exact kNN by chunked matmul; torch twin of ``faiss.IndexFlatIP`` / ``IndexFlatL2``.

    Scores: inner product (for "cosine" callers pass normalised vectors; higher first) or Euclidean distance
    (lower first). Ties: lower index first.
    """
    out_s, out_i = [], []
    base_sq = (base * base).sum(1) if metric == "l2" else None
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk]
        sim = q @ base.T  # [n, M]
        if metric == "l2":
            sim = 2 * sim - base_sq - (q * q).sum(1, keepdim=True)  # −‖q − b‖²
        s, i = torch.topk(sim, k, dim=1) if k > 1 else sim.max(dim=1, keepdim=True)
        out_s.append(s if metric == "cosine" else (-s).clamp_min(0).sqrt())
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


def knn_faiss(
    base: torch.Tensor,  # [M, C] float32
    query: torch.Tensor,  # [N, C] float32
    k: int,
    metric: Literal["cosine", "l2"] = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, k] score, [N, k] long
    """Exact kNN with a faiss flat index (GpuIndexFlat for CUDA tensors when faiss has GPU support)."""
    faiss = import_faiss()
    dim = base.shape[1]
    device = base.device
    if device.type == "cuda" and faiss_gpu_count() > 0:
        import faiss.contrib.torch_utils  # lets faiss GPU indexes take CUDA tensors directly

        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = device.index if device.index is not None else torch.cuda.current_device()
        res = gpu_resources(cfg.device)
        index = faiss.GpuIndexFlatIP(res, dim, cfg) if metric == "cosine" else faiss.GpuIndexFlatL2(res, dim, cfg)
        index.add(base.contiguous())
        dist, idx = index.search(query.contiguous(), k)
        dist, idx = dist.float(), idx.long()
    else:
        index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        index.add(np.ascontiguousarray(base.detach().cpu().numpy(), dtype=np.float32))
        d, i = index.search(np.ascontiguousarray(query.detach().cpu().numpy(), dtype=np.float32), k)
        dist, idx = torch.from_numpy(d).to(device), torch.from_numpy(i).long().to(device)
    if metric == "l2":
        dist = dist.clamp_min(0).sqrt()  # faiss returns squared L2
    return dist, idx


def knn(
    base: torch.Tensor,  # [M, C]
    query: torch.Tensor,  # [N, C]
    k: int,
    *,
    metric: Literal["cosine", "l2"] = "cosine",
    backend: Literal["auto", "faiss", "torch"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, k] score, [N, k] long
    """Exact k nearest neighbours of each query row among the base rows, by faiss or torch.

    ``"cosine"`` expects L2-normalised rows and scores by inner product (descending); ``"l2"`` scores by
    Euclidean distance (ascending). ``backend="auto"`` uses faiss when it is installed.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if not 1 <= k <= len(base):
        raise ValueError(f"k = {k} neighbours requested from {len(base)} base vectors; k must be in 1..{len(base)}")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        return knn_faiss(base, query, k, metric)
    return knn_torch(base, query, k, metric)
