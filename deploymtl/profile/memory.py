"""Peak memory of loading an artifact and running one batch, measured in a fresh child process.

A process's peak resident set only grows, so artifacts profiled one after another in the same process would
inherit each other's peaks. The child imports the backend library first (its RSS then is the *baseline*),
loads the artifact, runs `batch` images twice, and reports its peak RSS (VmHWM, else `getrusage`); `model_peak_mb` =
peak - baseline is what the artifact itself costs at that batch size.

    python -m deploymtl.profile.memory ARTIFACT --batch 8 [--provider cpu] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import DeploymtlError


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere the peak, which is the best available)."""
    rss = _proc_status_mb("VmRSS")
    return _peak_mb() if rss is None else rss


def _peak_mb() -> float:
    """Peak RSS of this process image. Linux: VmHWM, because getrusage's ru_maxrss survives fork + exec and so
    reports the parent's peak when the parent was larger."""
    import resource

    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


def peak_memory(path: str | Path, *, batch: int = 1, provider: str = "cpu", device: str = "cpu",
                threads: int | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """{"baseline_mb", "peak_mb", "model_peak_mb", "batch"} from a child process."""
    cmd = [sys.executable, "-m", "deploymtl.profile.memory", str(path), "--batch", str(batch),
           "--provider", provider, "--device", device] + (["--threads", str(threads)] if threads else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DeploymtlError(f"memory measurement of {path} took longer than {timeout_s:g} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise DeploymtlError(f"memory measurement of {path} failed: {last[:200]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploymtl.profile.memory")
    ap.add_argument("artifact")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from ..backends.load import artifact_kind
    from ..runtime.session import load

    try:
        if artifact_kind(args.artifact) == "onnx":
            import onnxruntime  # noqa: F401 - the library's own footprint belongs to the baseline
        else:
            import torch  # noqa: F401
        baseline = _rss_mb()
        session = load(args.artifact, provider=args.provider, device=args.device, threads=args.threads)
        x = session.example(args.batch)
        for _ in range(2):
            session.infer(x)
    except DeploymtlError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    peak = _peak_mb()
    print(json.dumps({"batch": args.batch, "baseline_mb": round(baseline, 2), "peak_mb": round(peak, 2),
                      "model_peak_mb": round(max(0.0, peak - baseline), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
