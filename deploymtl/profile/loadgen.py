"""Load patterns for measuring a service from the client side, the way perf_analyzer does, on any callable.

A *caller factory* `make_call()` runs once in each worker thread and returns that thread's `call()`, which sends
one request and returns when its answer is back (raising on an error): one client per thread, since HTTP client
objects are bound to the thread that made them. The same patterns drive a Triton client and the in-process
`Batcher`, so the two are measured alike.

- `closed_loop(make_call, c, settings)`: c workers, each sending its next request when the last one returned
  (concurrency c). After each worker's warm-up, consecutive windows of `duration_s` are cut from the stream of
  completions until the stability rule of `sweep.stable_windows` holds; latency = request round trip,
  throughput = completions in the pooled windows / their span. `on_start()` runs once every worker is warm,
  right before the first window (a statistics snapshot, say).
- `open_loop(make_call, arrivals, workers)`: requests released at fixed times (camera frames: `edge.arrivals`)
  into a queue served by a pool of workers, whatever happened to earlier requests; a frame's latency runs from its
  arrival time (so client-side waiting counts), and NaN marks a failed request.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeploymtlError
from .sweep import SweepSettings, latency_summary, stable_windows

Call = Callable[[], Any]
STALL_S = 10.0  # a window with fewer than min_calls completions after this long means the service is stuck


@dataclass
class _Completions:
    times: list[float] = field(default_factory=list)  # completion instants
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, end: float, latency: float) -> None:
        with self.lock:
            self.times.append(end)
            self.latencies.append(latency)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(short_error(exc))

    def between(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [lat for t, lat in zip(self.times, self.latencies, strict=True) if start <= t < end]


def short_error(exc: BaseException) -> str:
    """The last line of an error: Triton sends whole server tracebacks in its messages."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def _start_workers(n: int, make_call: Callable[[], Call], warmup: int, body: Callable[[Call], None],
                   done: _Completions) -> list[threading.Thread]:
    """n threads that each make their caller, warm up, then run `body(call)`; returns once all are warm."""
    ready = threading.Barrier(n + 1)

    def run() -> None:
        try:
            call = make_call()
            for _ in range(warmup):
                call()
        except Exception as exc:  # noqa: BLE001 - reported to the caller below
            done.fail(exc)
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        body(call)

    threads = [threading.Thread(target=run, daemon=True, name=f"deploymtl-load-{i}") for i in range(n)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise DeploymtlError(f"a client failed before the measurement: {done.errors[0]}") from None
    return threads


def closed_loop(make_call: Callable[[], Call], concurrency: int, settings: SweepSettings,
                on_start: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Measure at `concurrency` (module docstring); returns latency stats, throughput, stability, errors."""
    done = _Completions()
    stop = threading.Event()

    def body(call: Call) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                done.fail(exc)
                continue
            t1 = time.perf_counter()
            done.add(t1, t1 - t0)

    threads = _start_workers(concurrency, make_call, max(1, settings.warmup), body, done)
    spans: list[float] = []
    try:
        on_start()
        cursor = [time.perf_counter()]

        def window() -> list[float]:
            start = cursor[0]
            end = start + settings.duration_s
            time.sleep(max(0.0, end - time.perf_counter()))
            while len(done.between(start, end)) < settings.min_calls:
                if time.perf_counter() - start > settings.duration_s + STALL_S:
                    cause = f": {done.errors[-1]}" if done.errors else ""
                    raise DeploymtlError(f"fewer than {settings.min_calls} requests completed in "
                                         f"{time.perf_counter() - start:.0f} s at concurrency {concurrency}{cause}")
                time.sleep(0.01)
                end = time.perf_counter()
            cursor[0] = end
            spans.append(end - start)
            return done.between(start, end)

        m = stable_windows(window, settings)
    finally:
        stop.set()
        for t in threads:
            t.join()
    samples = m.pop("samples_s")
    return {"concurrency": concurrency, "requests": len(samples), "errors": len(done.errors),
            "error_sample": done.errors[0] if done.errors else None,
            "throughput_rps": len(samples) / sum(spans[-2:]), "latency_ms": latency_summary(samples)} | m


def open_loop(make_call: Callable[[], Call], arrivals_s: np.ndarray, workers: int, warmup: int = 1,
              on_start: Callable[[], None] = lambda: None) -> tuple[np.ndarray, list[str]]:
    """Release request i at `arrivals_s[i]` seconds after the start (after every worker's warm-up and
    `on_start()`); returns the latency per request (NaN on error) and the error messages."""
    done = _Completions()
    latency = np.full(len(arrivals_s), np.nan)
    jobs: queue.Queue[int | None] = queue.Queue()
    t0 = [0.0]

    def body(call: Call) -> None:
        while (i := jobs.get()) is not None:
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - a failed frame is NaN
                done.fail(exc)
                continue
            latency[i] = time.perf_counter() - t0[0] - arrivals_s[i]

    threads = _start_workers(workers, make_call, warmup, body, done)
    try:
        on_start()
        t0[0] = time.perf_counter()
        for i, at in enumerate(arrivals_s):
            time.sleep(max(0.0, t0[0] + at - time.perf_counter()))
            jobs.put(i)
    finally:
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.join()
    return latency, done.errors
