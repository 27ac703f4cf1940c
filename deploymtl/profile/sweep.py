"""Batch sweeps: latency and throughput of `session.infer` per batch size, measured until it is stable.

Per batch size: `warmup` untimed calls, then measurement windows of `duration_s` seconds each (at least
`min_calls` calls). The measurement is *stable* when the medians of two consecutive windows agree within
`tolerance` (relative); the statistics then pool those two windows. After `max_windows` windows without
agreement the last two windows are used anyway and a warning gives the coefficient of variation of the
window medians (a shared or throttled CPU shows here). Latency is wall time around `infer` (input checks
included: what a caller pays); throughput is images per second of busy time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeploymtlError

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class SweepSettings:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    duration_s: float = 1.0
    warmup: int = 3
    min_calls: int = 5
    max_windows: int = 5
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise DeploymtlError(f"batch sizes {list(self.batch_sizes)} are invalid", hint="expected integers >= 1")
        if not self.duration_s > 0:
            raise DeploymtlError(f"measurement duration is {self.duration_s} s", hint="expected > 0")
        if self.max_windows < 2 or self.min_calls < 1 or self.warmup < 0 or not self.tolerance > 0:
            raise DeploymtlError("sweep settings need max_windows >= 2, min_calls >= 1, warmup >= 0, tolerance > 0")


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """min/mean/p50/p90/p95/p99/max/std in milliseconds, and the coefficient of variation, of latency samples."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        raise DeploymtlError("no latency samples to summarise")
    out = {"n": int(a.size), "min_ms": float(a.min()), "mean_ms": float(a.mean())}
    out |= {f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES), strict=True)}
    out |= {"max_ms": float(a.max()), "std_ms": float(a.std()), "cv": float(a.std() / a.mean()) if a.mean() else 0.0}
    return out


def measure(fn: Callable[[], Any], settings: SweepSettings,
            timer: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time `fn()` by the stability rule; returns {"samples_s", "windows", "window_medians_ms", "stable", "cv"}."""
    for _ in range(settings.warmup):
        fn()

    def window() -> list[float]:
        samples: list[float] = []
        end = timer() + settings.duration_s
        while len(samples) < settings.min_calls or timer() < end:
            t0 = timer()
            fn()
            samples.append(timer() - t0)
        return samples

    return stable_windows(window, settings)


def stable_windows(next_window: Callable[[], list[float]], settings: SweepSettings) -> dict[str, Any]:
    """The stability rule over windows of samples (seconds) that `next_window()` measures one after another:
    stop when two consecutive medians agree within `tolerance`, or after `max_windows`; the result pools the
    last two windows (keys as `measure`)."""
    windows: list[list[float]] = []
    medians: list[float] = []
    stable = False
    while len(windows) < settings.max_windows:
        samples = next_window()
        windows.append(samples)
        medians.append(float(np.median(samples)))
        if len(medians) >= 2 and abs(medians[-1] - medians[-2]) <= settings.tolerance * min(medians[-2:]):
            stable = True
            break
    m = np.asarray(medians)
    return {"samples_s": windows[-2] + windows[-1], "windows": len(windows),
            "window_medians_ms": [float(v * 1e3) for v in m], "stable": stable,
            "cv": float(m.std() / m.mean()) if m.mean() else 0.0}


def sweep(session: Any, settings: SweepSettings, seed: int = 0,
          timer: Callable[[], float] = time.perf_counter) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure each batch size; returns (rows, warnings). A row: batch, latency stats, throughput, stability."""
    limit = session.max_batch
    too_big = [b for b in settings.batch_sizes if limit is not None and b > limit]
    if too_big:
        raise DeploymtlError(f"batch sizes {too_big} exceed the maximum batch {limit} of {session.path}",
                             hint=f"use --batch-sizes up to {limit}")
    rows, warnings = [], []
    for b in settings.batch_sizes:
        x = session.example(b, seed=seed)
        m = measure(lambda x=x: session.infer(x), settings, timer)
        samples = m.pop("samples_s")
        row = {"batch": b, "latency_ms": latency_summary(samples),
               "throughput_ips": b * len(samples) / sum(samples)} | m
        row["samples_ms"] = [s * 1e3 for s in samples]
        if not m["stable"]:
            warnings.append(f"{session.path.name} batch {b}: latency not stable after {m['windows']} windows of "
                            f"{settings.duration_s:g} s (coefficient of variation of window medians "
                            f"{m['cv']:.1%}); the CPU may be shared or throttled")
        rows.append(row)
    return rows, warnings
