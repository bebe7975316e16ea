"""``FeatureIndex``: a FAISS index over DIFT descriptors of many images, labelled (image id, x, y).

Labels are packed into faiss' 64-bit id (:mod:`.labels`), so they cost nothing beyond the id faiss keeps anyway.
Two kinds:

* ``"flat"``: exact search, 4·dim bytes per vector (+ 8 for the id);
* ``"ivfpq"``: an inverted file of ``nlist`` lists with product-quantised codes of ``m`` bytes (+ 8 for the id),
  trained on a sample; approximate, ``nprobe`` lists visited per query;
* ``"ivfpq"`` with ``refine="fp16"``: the same, plus a float16 copy of every vector (2·dim bytes): the IVF-PQ
  shortlist of ``refine_k_factor``·k candidates is re-ranked by exact distances to the float16 vectors (faiss
  ``IndexRefine`` over an ``IndexScalarQuantizer(QT_fp16)``, inside an ``IndexIDMap`` that keeps the labels).

Finding points of one image in a gallery of indexed images is :mod:`.gallery`.

Index files: one safetensors file holding faiss' serialised index and a JSON header, with a sha256 over both
(``checksum``), checked before faiss reads a byte of the index: faiss does not validate what it deserialises, and a
damaged file could crash the process. Beyond that check, index files are trusted input: load only indexes you
made or got from someone you trust.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..faiss_utils import faiss_gpu_count, gpu_resources, import_faiss
from ..matching.descriptors import pooled_descriptors
from .labels import cell_pixel_labels, pack_labels, unpack_labels
from .shards import index_to_cpu, shard_flat

__all__ = ["FORMAT", "FeatureIndex", "SearchResult", "default_nlist", "default_pq_bytes"]

FORMAT = "dift-fast-index/2"  # /2: a checksum over the header and the faiss bytes
_ADD_CHUNK = 65536  # vectors converted and added at a time
GPU_PQ_BYTES = (96, 64, 56, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4, 3, 2, 1)  # code sizes GpuIndexIVFPQ supports

IndexKind = Literal["flat", "ivfpq"]
Metric = Literal["cosine", "l2"]
Refine = Literal["fp16"]
REFINES = ("fp16",)


@dataclass(frozen=True)
class SearchResult:
    """k nearest stored vectors per query, best first; −1 ids (and NaN scores) where fewer than k were found."""

    image_ids: torch.Tensor  # [Q, k] long
    xy: torch.Tensor  # [Q, k, 2] long (x, y); −1 for image-level vectors and missing results
    scores: torch.Tensor  # [Q, k] float32: cosine (higher first) or L2 distance (lower first)


def default_pq_bytes(dim: int) -> int:
    """Bytes per PQ code: the largest GPU-supported m dividing ``dim`` with ≥ 16 dims per sub-quantiser."""
    for min_sub in (16, 4, 1):
        for m in GPU_PQ_BYTES:
            if dim % m == 0 and dim // m >= min_sub:
                return m
    return 1


def default_nlist(n_train: int) -> int:
    """Inverted lists for a training sample of ``n_train``: ~4·√n, with ≥ 39 training vectors per list."""
    return max(1, min(int(4 * math.sqrt(n_train)), n_train // 39, 65536))


class FeatureIndex:
    """Vectors labelled (image id, x, y) in a flat or IVF-PQ faiss index, on CPU, one GPU or sharded over all.

    Args:
        dim: vector dimension (the feature map's C).
        kind: ``"flat"`` (exact) or ``"ivfpq"`` (compressed; call :meth:`train` before :meth:`add`).
        metric: ``"cosine"`` (vectors are L2-normalised; score = cosine) or ``"l2"`` (score = distance).
        nlist: IVF lists (default from the training sample size, :func:`default_nlist`).
        m: PQ bytes per vector (default :func:`default_pq_bytes`); ``nbits`` bits per sub-quantiser code.
        nprobe: lists visited per query (IVF-PQ).
        refine: ``"fp16"`` to re-rank the IVF-PQ shortlist with stored float16 vectors (IVF-PQ only; +2·dim + 8
            bytes per vector), or None. Refined indexes stay on the CPU (see ``device``).
        refine_k_factor: candidates taken from IVF-PQ per result when refining (k·refine_k_factor re-ranked).
        device: ``"auto"`` (all GPUs faiss sees, else CPU), ``"cpu"``, ``"cuda"``/``"cuda:N"`` (one GPU), or
            ``"all"`` (sharded over every GPU: flat by :mod:`.shards`, IVF-PQ by ``index_cpu_to_gpus_list``). With
            ``refine``, ``"auto"`` means the CPU and a GPU device is an error: the refine wrapper is not cloned to
            GPUs here.
        meta: JSON-serialisable metadata saved with the index (e.g. image names and sizes).
    """

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "flat",
        *,
        metric: Metric = "cosine",
        nlist: int | None = None,
        m: int | None = None,
        nbits: int = 8,
        nprobe: int = 16,
        refine: Refine | None = None,
        refine_k_factor: float = 8.0,
        device: str = "auto",
        meta: dict[str, Any] | None = None,
    ) -> None:
        if kind not in ("flat", "ivfpq"):
            raise ValueError(f"kind must be 'flat' or 'ivfpq', got {kind!r}")
        if refine is not None and refine not in REFINES:
            raise ValueError(f"refine must be None or one of {REFINES}, got {refine!r}")
        if refine is not None and kind != "ivfpq":
            raise ValueError(f"refine={refine!r} re-ranks an IVF-PQ shortlist; it needs kind='ivfpq', got {kind!r}")
        if not refine_k_factor >= 1:
            raise ValueError(f"refine_k_factor must be at least 1, got {refine_k_factor}")
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        m = default_pq_bytes(dim) if m is None else m
        if kind == "ivfpq" and dim % m:
            raise ValueError(f"PQ bytes m = {m} must divide the dimension {dim}")
        self.dim, self.kind, self.metric = dim, kind, metric
        self.nlist, self.m, self.nbits, self.nprobe = nlist, m, nbits, nprobe
        self.refine, self.refine_k_factor = refine, float(refine_k_factor)
        self.meta: dict[str, Any] = dict(meta or {})
        self._gpus = _resolve_gpus(device)
        if refine is not None and self._gpus:
            if device != "auto":
                raise ValueError(
                    f"refine={refine!r} indexes run on the CPU only (the IndexRefine wrapper is not cloned to GPUs "
                    f"here); use device='cpu' or 'auto', or refine=None for a GPU IVF-PQ index"
                )
            self._gpus = ()
        self._index: Any = None
        if kind == "flat":
            faiss = import_faiss()
            flat = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
            self._set_index(faiss.IndexIDMap2(flat))

    # -- state ----------------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        return self._index is not None and bool(self._index.is_trained)

    @property
    def device(self) -> str:
        if not self._gpus:
            return "cpu"
        return f"cuda:{self._gpus[0]}" if len(self._gpus) == 1 else f"{len(self._gpus)} GPUs (sharded)"

    @property
    def bytes_per_vector(self) -> int:
        """Stored bytes per vector: the code (4·dim flat, m·nbits/8 IVF-PQ) plus faiss' 8-byte id (our label).

        With ``refine="fp16"`` add the float16 vector (2·dim) and a second 8-byte id: the IVF lists then hold
        sequential ids (IndexRefine finds the float16 vector by position) and an IndexIDMap maps them to labels.
        """
        code = 4 * self.dim if self.kind == "flat" else math.ceil(self.m * self.nbits / 8)
        if self.refine == "fp16":
            return code + 8 + 2 * self.dim + 8
        return code + 8

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, m={self.m}, nprobe={self.nprobe}" if self.kind == "ivfpq" else ""
        if self.refine:
            extra += f", refine={self.refine!r}, refine_k_factor={self.refine_k_factor:g}"
        return (f"FeatureIndex(dim={self.dim}, kind={self.kind!r}, metric={self.metric!r}{extra}, "
                f"ntotal={self.ntotal}, device={self.device!r}, {self.bytes_per_vector} B/vector)")

    # -- building -------------------------------------------------------------------------------------------------
    def train(self, sample: torch.Tensor) -> FeatureIndex:
        """Train the IVF-PQ quantisers on ``sample`` [n, dim] (a random subset of what will be added)."""
        if self.kind == "flat":
            return self
        if self.ntotal:
            raise ValueError(f"the index already holds {self.ntotal} vectors; train before adding")
        x = self._as_matrix(sample, "sample")
        nlist = self.nlist or default_nlist(len(x))
        need = max(nlist, 2**self.nbits)
        if len(x) < need:
            raise ValueError(
                f"IVF-PQ with nlist={nlist}, nbits={self.nbits} needs at least {need} training vectors, got "
                f"{len(x)}; train on more vectors, lower nlist/nbits, or use kind='flat' for small galleries"
            )
        faiss = import_faiss()
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        ivf = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.m, self.nbits, metric)
        ivf.cp.min_points_per_centroid = 1  # nlist was checked above; silence faiss' stdout warnings
        ivf.pq.cp.min_points_per_centroid = 1
        ivf.train(x)  # faiss' Python wrapper keeps the quantizer alive as long as ivf
        self.nlist = nlist
        if self.refine == "fp16":
            # IndexRefine looks its float16 vectors up by position, so the IVF-PQ inside it gets sequential ids
            # and the IndexIDMap outside carries the labels. The wrappers keep Python references to what they wrap.
            fp16 = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, metric)
            self._set_index(faiss.IndexIDMap(faiss.IndexRefine(ivf, fp16)))
        else:
            self._set_index(ivf)
        return self

    def add(
        self,
        vectors: torch.Tensor,  # [n, dim]
        image_ids: torch.Tensor | int,  # [n] or one id for all
        xy: torch.Tensor | None = None,  # [n, 2] (x, y) pixels; None: image-level vectors
    ) -> FeatureIndex:
        """Add vectors with their labels. All inputs are checked before anything is added."""
        if not self.is_trained:
            raise ValueError("this IVF-PQ index is not trained; call train(sample) first (or use FeatureIndex.build)")
        x = self._as_matrix(vectors, "vectors")
        ids = torch.as_tensor(image_ids).long()
        ids = ids.expand(len(x)) if ids.ndim == 0 else ids
        if ids.shape != (len(x),):
            raise ValueError(f"image_ids must be one id or [n] with n = {len(x)}, got shape {list(ids.shape)}")
        labels = pack_labels(ids, xy)
        for start in range(0, len(x), _ADD_CHUNK):
            self._index.add_with_ids(x[start:start + _ADD_CHUNK], labels[start:start + _ADD_CHUNK])
        return self

    def add_dense(
        self,
        feat: torch.Tensor,  # [C, h, w]
        image_id: int,
        image_size: tuple[int, int] | None = None,  # (W, H)
    ) -> FeatureIndex:
        """Add every cell of a feature map, labelled with its centre in image pixels (or cells without a size)."""
        if feat.ndim != 3:
            raise ValueError(f"feat must be a feature map [C, h, w], got {list(feat.shape)}")
        c, h, w = feat.shape
        return self.add(feat.reshape(c, h * w).T, image_id, cell_pixel_labels(h, w, image_size))

    def add_pooled(self, feats: torch.Tensor, image_ids: Sequence[int] | torch.Tensor) -> FeatureIndex:
        """Add one image-level vector per map of ``feats`` [B, C, h, w] (see :func:`pooled_descriptors`)."""
        return self.add(pooled_descriptors(feats), torch.as_tensor(image_ids))

    @classmethod
    def build(
        cls,
        vectors: torch.Tensor,  # [n, dim]
        image_ids: torch.Tensor | int,
        xy: torch.Tensor | None = None,
        *,
        kind: IndexKind = "flat",
        train_size: int = 100_000,
        seed: int = 0,
        **options: Any,
    ) -> FeatureIndex:
        """Create, train (IVF-PQ: on a random sample of ``train_size`` vectors) and fill an index."""
        index = cls(int(vectors.shape[-1]), kind, **options)
        if kind == "ivfpq":
            gen = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(vectors), generator=gen)[:train_size]
            index.train(vectors[pick])
        return index.add(vectors, image_ids, xy)

    # -- search ---------------------------------------------------------------------------------------------------
    def search(self, queries: torch.Tensor, k: int = 10) -> SearchResult:
        """The ``k`` best stored vectors for each query ``[Q, dim]`` (or ``[dim]``)."""
        if self.ntotal == 0:
            raise ValueError("the index is empty; add vectors before searching")
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"k = {k} but the index holds {self.ntotal} vectors; k must be in 1..{self.ntotal}")
        q = queries if queries.ndim == 2 else queries.reshape(1, -1)
        x = self._as_matrix(q, "queries")
        scores, labels = self._search_stable(x, k)
        image, xy = unpack_labels(labels)
        scores = torch.from_numpy(scores)
        if self.metric == "l2":
            scores = scores.clamp_min(0).sqrt()  # faiss reports squared distances
        return SearchResult(image, xy, torch.where(image < 0, float("nan"), scores))

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index and its metadata to one file, atomically (:mod:`dift_fast.atomic`)."""
        from safetensors.numpy import save_file

        faiss = import_faiss()
        cpu = index_to_cpu(self._index) if self._gpus else self._index
        blob = faiss.serialize_index(cpu) if cpu is not None else np.zeros(0, np.uint8)
        header = {"format": FORMAT, "dim": self.dim, "kind": self.kind, "metric": self.metric, "nlist": self.nlist,
                  "m": self.m, "nbits": self.nbits, "nprobe": self.nprobe, "refine": self.refine,
                  "refine_k_factor": self.refine_k_factor, "meta": self.meta}
        blob = np.ascontiguousarray(blob, dtype=np.uint8)
        text = json.dumps(header, sort_keys=True)
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"faiss": blob}, str(tmp), metadata={"header": text, "checksum": _checksum(text, blob)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> FeatureIndex:
        """Read an index written by :meth:`save`, onto ``device`` (as in the constructor)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index file {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                text, checksum = meta["header"], meta.get("checksum")
                blob = f.get_tensor("faiss")
            header = json.loads(text)
        except Exception as err:
            raise ValueError(f"{path} is not a dift-fast index file or is damaged ({type(err).__name__}: {err})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else None
            raise ValueError(f"{path} is not a dift-fast index (format {found!r}, expected {FORMAT}); "
                             "rebuild it with `dift-fast index build`")
        if blob.dtype != np.uint8 or blob.ndim != 1 or checksum != _checksum(text, blob):
            # Checked before faiss sees the bytes: faiss does not validate them, and a damaged index can crash.
            raise ValueError(f"{path} is damaged: its checksum does not match its content (modified or corrupt "
                             "after it was written); rebuild it with `dift-fast index build`")
        index = cls(header["dim"], header["kind"], metric=header["metric"], nlist=header["nlist"], m=header["m"],
                    nbits=header["nbits"], nprobe=header["nprobe"], refine=header.get("refine"),
                    refine_k_factor=header.get("refine_k_factor", 8.0), device=device, meta=header["meta"])
        if blob.size:
            index._set_index(import_faiss().deserialize_index(blob))
        return index

    # -- internals ------------------------------------------------------------------------------------------------
    def _search_stable(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # [Q, k] scores, labels
        """faiss' search with equal scores ordered by label (image id, then y, x), so that the ``k`` results are
        always the first ``k`` of the ``k + 1`` results.

        faiss orders equal scores as its heap leaves them, which changes with k. Here the search asks for more
        results until the last one scores strictly worse than the k-th (so every result tied with the k-th is in
        hand; usually one extra result), then sorts by (score, label). Exact for flat and IVF-PQ indexes (the
        candidates and their scores do not depend on k); a refined index re-ranks k·k_factor candidates, so a
        larger k may bring in a better one.
        """
        higher_first = self.metric == "cosine"
        want = min(k + 1, self.ntotal)
        while True:
            scores, labels = self._index.search(x, want)
            if want >= self.ntotal or want == k:
                break
            kth, last = scores[:, k - 1], scores[:, -1]
            ties_beyond = (labels[:, -1] >= 0) & (last == kth)  # the k-th score may continue past what we have
            if not ties_beyond.any():
                break
            want = min(2 * want, self.ntotal)
        missing = labels < 0  # fewer results than asked (IVF): kept last
        key = np.where(missing, np.inf, -scores if higher_first else scores)
        order = np.lexsort((labels, key), axis=-1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1)

    def _as_matrix(self, x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:  # [n, dim] float32 C-contiguous
        t = torch.as_tensor(x)
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise ValueError(f"{name} must be [n, {self.dim}] for this {self.dim}-d index, got {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
        t = t.detach().float()
        if self.metric == "cosine":
            t = F.normalize(t, dim=1)
        return np.ascontiguousarray(t.cpu().numpy())

    def _set_index(self, cpu_index: Any) -> None:
        faiss = import_faiss()
        if cpu_index.is_trained and self.kind == "ivfpq":
            faiss.extract_index_ivf(cpu_index).nprobe = self.nprobe  # also through IndexIDMap and IndexRefine
        if self.refine is not None:
            faiss.downcast_index(cpu_index.index).k_factor = self.refine_k_factor
        if not self._gpus:
            self._index = cpu_index
            return
        if self.kind == "flat" and len(self._gpus) > 1:  # faiss' own flat shards take one add only (.shards)
            self._index = shard_flat(cpu_index, self._gpus)
            return
        options = faiss.GpuMultipleClonerOptions()
        options.useFloat16 = self.kind == "ivfpq" and self.m > 48  # GPU PQ lookup tables above 48 bytes
        if len(self._gpus) == 1:
            self._index = faiss.index_cpu_to_gpu(gpu_resources(self._gpus[0]), self._gpus[0], cpu_index, options)
        else:
            options.shard = True
            self._index = faiss.index_cpu_to_gpus_list(cpu_index, co=options, gpus=list(self._gpus))
        if self.kind == "ivfpq":
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)


def _checksum(header: str, blob: np.ndarray) -> str:
    """sha256 over an index file's header text and faiss bytes."""
    h = hashlib.sha256(header.encode())
    h.update(b"\0")
    h.update(np.ascontiguousarray(blob))  # hashed in place, no copy
    return h.hexdigest()


def _resolve_gpus(device: str) -> tuple[int, ...]:
    """GPU ids for ``device``; explicit GPU requests fail clearly where faiss cannot use a GPU."""
    count = faiss_gpu_count()
    if device == "auto":
        return tuple(range(count))
    if device == "cpu":
        return ()
    if device == "all" or device.startswith("cuda"):
        if count == 0:
            raise ValueError(
                f"device={device!r} but this faiss has no GPU support (or sees no GPU); install faiss-gpu "
                "(conda install -c pytorch faiss-gpu) or use device='cpu'"
            )
        if device == "all":
            return tuple(range(count))
        gpu = int(device.split(":")[1]) if ":" in device else 0
        if gpu >= count:
            raise ValueError(f"device={device!r} but faiss sees {count} GPU(s)")
        return (gpu,)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'all', got {device!r}")
