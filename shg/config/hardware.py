"""What this machine computes natively, for `mixed_precision = "auto"`: a GPU answers for itself,
a CPU by its flags in /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags of native bf16 arithmetic (what makes bf16 autocast faster than fp32)."""


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Does this machine compute bf16 natively (so autocast speeds training up)? A GPU answers
    for itself; a CPU by the flags in /proc/cpuinfo (or the `cpuinfo` text given)."""
    import torch

    if cpuinfo is None:
        if torch.cuda.is_available():
            return torch.cuda.is_bf16_supported()
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags")
             for flag in line.partition(":")[2].split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(value: str) -> str:
    """mixed_precision as training runs it: "auto" becomes "bf16" where it is native, else
    "no"; any other value stays."""
    return ("bf16" if native_bf16() else "no") if value == "auto" else value

