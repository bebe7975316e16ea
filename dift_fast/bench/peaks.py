"""Peak dense arithmetic throughput of known GPUs, or a measured large matmul for others.

The table holds NVIDIA's datasheet figures without structured sparsity (datasheets quote the tensor-core numbers
"with sparsity", twice the dense ones; the dense half is used here). fp32 is the non-tensor-core FP32 figure;
bf16/fp16 are tensor-core figures with fp32 accumulation (what torch's half-precision matmuls and convolutions use).
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["KNOWN_PEAKS", "measured_matmul_flops", "peak_flops"]

# (pattern on torch.cuda.get_device_name, label, TFLOP/s by dtype), first match wins. Sources: NVIDIA datasheets
# (H100: "NVIDIA H100 Tensor Core GPU" datasheet; H200: "NVIDIA H200 Tensor Core GPU"; A100: "NVIDIA A100 Tensor
# Core GPU"; L40S, L40, L4, A10, RTX A6000, RTX 6000 Ada product datasheets) and, for the GeForce RTX 4090, the
# "NVIDIA Ada GPU Architecture" whitepaper (FP16/BF16 tensor with FP32 accumulate; the 330 TFLOP/s figure is FP16
# accumulate).
KNOWN_PEAKS: list[tuple[str, str, dict[str, float]]] = [
    (r"H200 NVL", "H200 NVL", {"fp32": 60.0, "bf16": 835.5, "fp16": 835.5}),
    (r"H200", "H200 SXM", {"fp32": 67.0, "bf16": 989.5, "fp16": 989.5}),
    (r"H100 NVL", "H100 NVL", {"fp32": 60.0, "bf16": 835.5, "fp16": 835.5}),
    (r"H100.*PCIe", "H100 PCIe", {"fp32": 51.0, "bf16": 756.5, "fp16": 756.5}),
    (r"H100", "H100 SXM", {"fp32": 67.0, "bf16": 989.5, "fp16": 989.5}),
    (r"A100", "A100", {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0}),
    (r"L40S", "L40S", {"fp32": 91.6, "bf16": 362.05, "fp16": 362.05}),
    (r"L40\b", "L40", {"fp32": 90.5, "bf16": 181.05, "fp16": 181.05}),
    (r"\bL4\b", "L4", {"fp32": 30.3, "bf16": 121.0, "fp16": 121.0}),
    (r"\bA10\b", "A10", {"fp32": 31.2, "bf16": 125.0, "fp16": 125.0}),
    (r"RTX 6000 Ada", "RTX 6000 Ada", {"fp32": 91.1, "bf16": 364.2, "fp16": 364.2}),
    (r"RTX A6000", "RTX A6000", {"fp32": 38.7, "bf16": 154.85, "fp16": 154.85}),
    (r"RTX 4090", "GeForce RTX 4090", {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2}),
]


def peak_flops(device_name: str, dtype: str) -> dict[str, Any] | None:
    """``{"flops_per_s", "label", "source"}`` of the table entry for ``device_name`` and ``dtype``, or None."""
    for pattern, label, peaks in KNOWN_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE) and dtype in peaks:
            return {
                "flops_per_s": peaks[dtype] * 1e12,
                "label": label,
                "source": f"datasheet, dense {dtype}" + (" (FP32 non-tensor)" if dtype == "fp32" else ""),
            }
    return None


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an ``n``×``n`` by ``n``×``n`` matmul on ``device`` (CUDA), timed with events after a warm-up.

    A reachable ceiling for an unknown GPU, not its datasheet peak (TF32 follows torch's current settings).
    """
    if device.type != "cuda":
        raise ValueError(f"measured_matmul_flops needs a CUDA device, got {device}")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    stop.record()
    stop.synchronize()
    seconds = start.elapsed_time(stop) / 1e3 / repeats
    return 2.0 * n**3 / seconds
