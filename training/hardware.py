"""What the training processes run on: device, precision, peak FLOPS and memory.

`peak_bf16_flops` reads a small table of dense (no structured sparsity) bf16 tensor-core peaks by
GPU name, for the model FLOPs utilisation in metrics.jsonl. A GPU not in the table, or a CPU,
has no defined peak: MFU is then null rather than a guess.
"""

from __future__ import annotations

import logging
import resource
import sys

import torch

log = logging.getLogger(__name__)

# Dense bf16 tensor-core TFLOPS per GPU, from the vendor datasheets (NVIDIA quotes the sparse
# figure first, twice these):
# - H100 SXM and H200 SXM: 989.4 (H100 datasheet "BF16 Tensor Core 1,979 TFLOPS*", *with
#   sparsity; H200 datasheet the same), H100 PCIe: 756.5 (1,513 with sparsity).
# - A100 SXM and PCIe: 312 (A100 datasheet "BF16 Tensor Core 312 | 624* TFLOPS").
# - L40S: 362.05 (733 with sparsity), L4: 121 (242 with sparsity), A10: 125 (250 with sparsity).
# Matched in order on the name torch reports (e.g. "NVIDIA H100 80GB HBM3"), specific names first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.5),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("A10", 125.0),
]


def device(local_rank: int) -> torch.device:
    """This process's device: GPU `local_rank` (made current) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_dtype(requested: str) -> str:
    """`auto` as bf16 on a GPU that supports it, else fp32 (this machine); others unchanged."""
    if requested == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return requested


def torch_dtype(dtype: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def gpu_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def peak_bf16_flops(name: str | None) -> float | None:
    """Dense bf16 peak of one GPU in FLOP/s, or None (CPU, or a GPU not in the table)."""
    if name is None:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12
    log.warning("no bf16 peak known for GPU %r: mfu is reported as null", name)
    return None


def peak_memory_bytes() -> int:
    """Peak accelerator memory allocated by torch on this process's GPU, or the process's peak
    resident set size on CPU (ru_maxrss is KiB on Linux, bytes on macOS)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
