"""Timing candidate graphs on the target, for the speed-aware precision mix (`--precision auto`, `export.mixed`).

A group's int8 and float versions are timed as the whole graph with that group in int8 and in float (everything
else as it is), because that is what the group costs in place: whether ONNX Runtime fuses it with its neighbours,
whether a float island adds Quantize/Dequantize work at its borders, are properties of the graph, not of the
group alone. The target here is ONNX Runtime on the CPU (plain sessions on the file's bytes, the caller's thread
count); a TensorRT-bound graph cannot be timed without TensorRT and says so (`mixed`).

Noise: the candidates are timed in turns (every round runs each candidate once per batch size, interleaved), a
few runs per turn, and each figure is the median over all rounds, so a slow spell of the machine hits every
candidate alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from ..onnxkit.session import QUIET, open_session

K = TypeVar("K", bound=Hashable)


def time_graphs(graphs: Mapping[K, bytes], image: tuple[int, int, int], batches: Sequence[int], *,
                dtype: str = "float32", threads: int | None = None, rounds: int = 5,
                target_s: float = 0.02) -> dict[K, dict[int, float]]:
    """{key: {batch: median ms}} of each serialized graph on ONNX Runtime CPU; `target_s` is about how long one
    turn of one candidate at one batch size runs (more runs for fast graphs)."""
    sessions = {k: open_session(g, threads=threads, log_severity=QUIET) for k, g in graphs.items()}
    rng = np.random.default_rng(0)
    feeds = {}
    for b in batches:
        x = rng.random((b, *image), dtype=np.float32)
        feeds[b] = (x * 255).astype(np.uint8) if dtype == "uint8" else x
    name = next(iter(sessions.values())).get_inputs()[0].name if sessions else ""
    runs: dict[tuple[K, int], int] = {}
    for k, s in sessions.items():  # warm up, and size each turn
        for b in batches:
            s.run(None, {name: feeds[b]})
            t0 = time.perf_counter()
            s.run(None, {name: feeds[b]})
            runs[(k, b)] = max(1, min(50, int(target_s / max(time.perf_counter() - t0, 1e-6))))
    samples: dict[tuple[K, int], list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for k, s in sessions.items():
            for b in batches:
                for _ in range(runs[(k, b)]):
                    t0 = time.perf_counter()
                    s.run(None, {name: feeds[b]})
                    samples[(k, b)].append((time.perf_counter() - t0) * 1e3)
    return {k: {b: round(statistics.median(samples[(k, b)]), 4) for b in batches} for k in sessions}


def relative_cost(times: Mapping[int, float], reference: Mapping[int, float]) -> float:
    """Mean over batch sizes of time / the reference's time: 1.0 is as fast, < 1 faster (each batch size weighs
    the same, however long it runs)."""
    return statistics.fmean(times[b] / reference[b] for b in reference)
