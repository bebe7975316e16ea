"""Crash-safe feature stores for large extraction runs (owned by the batch-extraction work)."""
