"""Loaders for the benchmarks' official on-disk layouts (no downloads: point them at a local copy)."""
