"""Crash-safe feature stores for large extraction runs (``dift-fast extract ROOT --out STORE``); see docs/store.md."""

from .h5 import export_h5
from .job import StoreJob
from .runner import StoreSummary, extract_to_store
from .store import FeatureStore, StoreConfigError, StoreError, StoreFullError, StoreLockedError

__all__ = [
    "FeatureStore",
    "StoreConfigError",
    "StoreError",
    "StoreFullError",
    "StoreJob",
    "StoreLockedError",
    "StoreSummary",
    "export_h5",
    "extract_to_store",
]
