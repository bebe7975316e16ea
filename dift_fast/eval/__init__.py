"""Benchmark harness: SPair-71k, PF-WILLOW, HPatches, DAVIS-2017, JHMDB and a synthetic-homography check.

Run it with ``dift-fast eval BENCHMARK --root DIR``; see docs/eval.md. Nothing here downloads data or weights.
"""
