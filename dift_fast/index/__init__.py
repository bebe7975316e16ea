"""A FAISS index over DIFT descriptors of many images, and "find this point in the gallery".

- :mod:`.feature_index`: :class:`FeatureIndex` (flat or IVF-PQ, CPU or GPUs, saved to one file);
- :mod:`.labels`: (image id, x, y) labels packed into faiss ids, and dense cells' labels;
- :mod:`.shards`: an exact index sharded over several GPUs that takes any number of adds;
- :mod:`.gallery`: :func:`find_points`, retrieval on pooled descriptors followed by exact point transfer.
"""

from ..matching.descriptors import pooled_descriptors
from .feature_index import FeatureIndex, SearchResult
from .gallery import PointHits, find_points

__all__ = ["FeatureIndex", "PointHits", "SearchResult", "find_points", "pooled_descriptors"]
