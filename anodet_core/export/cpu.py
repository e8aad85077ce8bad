"""What the CPU offers for inference, and how to measure a narrower instruction set on a wider machine."""

from __future__ import annotations

import os

__all__ = ["CPU_FLAGS", "ISA_LIMIT_ENV", "cpu_flags", "cpu_model", "cpu_summary", "isa_limit"]

CPU_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The /proc/cpuinfo flags that decide the fast inference path: fp32 SIMD width, int8 dot products (VNNI), bf16."""

ISA_LIMIT_ENV: tuple[str, ...] = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
"""Environment that narrows torch's kernels (oneDNN, ATen) to an older instruction set, e.g. AVX2 on an AVX-512
machine; set before torch starts. OpenVINO and ONNX Runtime offer no such switch in their release builds."""


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_flags() -> dict[str, bool]:
    """Each of :data:`CPU_FLAGS`: whether the CPU reports it (all False where /proc/cpuinfo cannot be read)."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in CPU_FLAGS}


def cpu_model() -> str:
    """The CPU's model name ("unknown" where /proc/cpuinfo cannot be read)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def isa_limit() -> str | None:
    """The instruction-set limit in force for torch (``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``), or None."""
    parts = [f"{k}={os.environ[k]}" for k in ISA_LIMIT_ENV if os.environ.get(k)]
    return ", ".join(parts) or None


def cpu_summary() -> str:
    """One line: model name, the flags present, and any instruction-set limit."""
    present = [f for f, on in cpu_flags().items() if on]
    limit = isa_limit()
    return (f"{cpu_model()}; {os.cpu_count()} logical cores; flags: {' '.join(present) or 'none of ' + ' '.join(CPU_FLAGS)}"
            + (f"; limited by {limit} (torch only)" if limit else ""))
