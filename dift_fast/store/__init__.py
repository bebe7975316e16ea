"""Crash-safe feature stores for large extraction runs (``dift-fast extract ROOT --out STORE``); see docs/store.md."""

from .h5 import H5Export, export_h5
from .job import StoreJob
from .runner import StoreSummary, extract_to_store
from .store import (
    FeatureStore,
    StoreConfigError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)

__all__ = [
    "FeatureStore",
    "H5Export",
    "StoreConfigError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreJob",
    "StoreLockedError",
    "StoreSummary",
    "export_h5",
    "extract_to_store",
]
