"""What the hardware computes natively, read once where a choice depends on it (the training
precision, the CPU inference precision)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 in hardware, and what says so."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        ok = major >= 8
        return ok, f"CUDA compute capability {major}.{minor} ({'>=' if ok else '<'} 8.0 for bf16 tensor cores)"
    if device.type == "cpu" and sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False, "/proc/cpuinfo unreadable"
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
        return bool(found), f"CPU flags {', '.join(found)}" if found else "no avx512_bf16 or amx_bf16 CPU flag"
    return False, f"bf16 hardware not detected on {device.type} ({sys.platform})"
