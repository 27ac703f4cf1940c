"""What ONNX Runtime's CPU kernels do on this machine: the SIMD block of its NCHWc layout, and whether its int8
matrix kernels run on AMX."""

from __future__ import annotations

from functools import cache


@cache  # read once per process: the runner's notes and every shaping ask again
def _cpu_flags() -> str:
    """The first processor's flags line of /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "") + " "


def simd_block() -> int:
    """Channel block of ONNX Runtime's NCHWc kernels (MLAS) on this CPU: 16 floats with AVX-512F, else 8 (AVX2
    and others). A file shaped for a block of 16 is aligned for 8 too; one shaped for 8 runs unaligned on 16."""
    return 16 if " avx512f " in _cpu_flags() else 8


def amx_int8() -> bool:
    """Whether this CPU has AMX int8 tiles (Intel Sapphire Rapids and later), which MLAS's quantised GEMM uses."""
    return " amx_int8 " in _cpu_flags()
