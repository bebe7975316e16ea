"""The benchmarks' metrics, each as its reference evaluation computes it."""
