"""A store's identity: the feature identity (:mod:`dift_fast.identity`) plus how the store keeps the features.

Two runs with equal identities write equal stores, so a run resumes into a store only when its identity equals the
one the store was made with (``store.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ..identity import describe_diff

__all__ = ["StoreDtype", "describe_diff", "feature_part", "store_identity"]

StoreDtype = Literal["fp16", "fp32"]
STORE_KEYS = ("store_dtype", "pca_dim", "pca_sample")


def store_identity(features: Mapping[str, Any], store_dtype: StoreDtype, pca_dim: int | None,
                   pca_sample: int) -> dict[str, Any]:
    """The identity of a store of ``features`` (a feature identity): plus the stored precision and the PCA."""
    return {**features, "store_dtype": store_dtype, "pca_dim": pca_dim, "pca_sample": pca_sample if pca_dim else None}


def feature_part(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The feature identity inside a store identity (what an extractor writing into the store must equal)."""
    return {k: v for k, v in identity.items() if k not in STORE_KEYS}
