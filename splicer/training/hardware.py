"""What a device computes fast, for the ``auto`` settings that depend on it.

bf16 convolutions pay only where the hardware has bf16 units: CUDA GPUs that support it, and x86 CPUs
with AMX tiles, where oneDNN runs them on the tiles (the frozen teacher's forward measured 6x faster than
fp32 there: benchmarks/results/teacher_forward_amx.md). On other CPUs they are emulated and several
times slower (benchmarks/results/teacher_forward.md).
"""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions run natively (faster than fp32) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        has_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x; absent: assume none
        return bool(has_amx and has_amx())
    return False
