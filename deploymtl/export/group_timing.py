"""Timing candidate graphs on the target, for the speed-aware precision mix (`--precision auto`, `export.mixed`).

A group's int8 and float versions are timed as the whole graph with that group in int8 and in float (everything
else as it is), because that is what the group costs in place: whether ONNX Runtime fuses it with its neighbours,
whether a float island adds Quantize/Dequantize work at its borders, are properties of the graph, not of the
group alone. The target here is ONNX Runtime on the CPU (plain sessions on the file's bytes, the caller's thread
count); a TensorRT-bound graph cannot be timed without TensorRT and says so (`mixed`).

Noise: the candidates are timed in turns (every round runs each candidate once per batch size, interleaved, each
turn in a fresh session as a service would hold it alone), a few runs per turn, and each figure is the median over
all rounds, so a slow spell of the machine hits every candidate alike.
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
                target_s: float = 0.05) -> dict[K, dict[int, float]]:
    """{key: {batch: median ms}} of each serialized graph on ONNX Runtime CPU; `target_s` is about how long one
    turn of one candidate at one batch size runs (more runs for fast graphs, at least 2).

    Each turn opens its own session and closes it after: an idle session's thread pool keeps spinning for a while
    after a run and would steal the cores from the candidate timed next (measured: with every session open at
    once, the same int8 graph read 29 ms and 42 ms at batch 4 in two runs on a quiet machine)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for b in batches:
        x = rng.random((b, *image), dtype=np.float32)
        feeds[b] = (x * 255).astype(np.uint8) if dtype == "uint8" else x
    runs: dict[tuple[K, int], int] = {}
    samples: dict[tuple[K, int], list[float]] = {(k, b): [] for k in graphs for b in batches}
    for _ in range(rounds):
        for k, graph in graphs.items():
            session = open_session(graph, threads=threads, log_severity=QUIET)
            name = session.get_inputs()[0].name
            for b in batches:
                t0 = time.perf_counter()
                session.run(None, {name: feeds[b]})  # warm-up; the first round also sizes the turns
                if (k, b) not in runs:
                    runs[(k, b)] = max(2, min(50, int(target_s / max(time.perf_counter() - t0, 1e-6))))
                for _ in range(runs[(k, b)]):
                    t0 = time.perf_counter()
                    session.run(None, {name: feeds[b]})
                    samples[(k, b)].append((time.perf_counter() - t0) * 1e3)
            del session
    return {k: {b: round(statistics.median(samples[(k, b)]), 4) for b in batches} for k in graphs}


def relative_cost(times: Mapping[int, float], reference: Mapping[int, float]) -> float:
    """Mean over batch sizes of time / the reference's time: 1.0 is as fast, < 1 faster (each batch size weighs
    the same, however long it runs)."""
    return statistics.fmean(times[b] / reference[b] for b in reference)
