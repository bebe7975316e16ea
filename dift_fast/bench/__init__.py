"""Latency and throughput benchmarking of the engine (``dift-fast bench``), the timing code of the
product (the developer scripts under benchmarks/ keep small timers of their own for kernels and exports).

Modules, one job each: :mod:`~dift_fast.bench.stats` (percentiles, coefficient of variation, the stability limit),
:mod:`~dift_fast.bench.timers` (perf_counter / CUDA-event call and stage timers), :mod:`~dift_fast.bench.memory`
(peak memory), :mod:`~dift_fast.bench.environment` (the machine description), :mod:`~dift_fast.bench.peaks`
(device peak FLOP/s), :mod:`~dift_fast.bench.models` (what runs: a model or an architecture with random weights),
:mod:`~dift_fast.bench.baseline` (the reference style), :mod:`~dift_fast.bench.runner` (running the
configurations), :mod:`~dift_fast.bench.report` (JSON schema, table, stability) and :mod:`~dift_fast.bench.plot`.

Example:
    >>> from dift_fast.bench import BenchSettings, run_benchmark, format_table
    >>> report = run_benchmark(BenchSettings(model="tiny-random", device="cpu", image_size=(64, 64),
    ...                                      ensemble_size=2, batch_sizes=(1, 2), iters=3, baseline=True))
    >>> print(format_table(report))
"""

from .report import format_table, instability, write_json
from .runner import SCHEMA, BenchSettings, run_benchmark
from .stats import MAX_CV, Summary, summarize

__all__ = [
    "MAX_CV",
    "SCHEMA",
    "BenchSettings",
    "Summary",
    "format_table",
    "instability",
    "run_benchmark",
    "summarize",
    "write_json",
]
