"""What ONNX Runtime's CPU kernels block channels by on this machine: the SIMD block of its NCHWc layout."""

from __future__ import annotations


def simd_block() -> int:
    """Channel block of ONNX Runtime's NCHWc kernels (MLAS) on this CPU: 16 floats with AVX-512F, else 8 (AVX2
    and others). A file shaped for a block of 16 is aligned for 8 too; one shaped for 8 runs unaligned on 16."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return 16 if " avx512f" in f.read(1 << 16) else 8
    except OSError:
        return 8
