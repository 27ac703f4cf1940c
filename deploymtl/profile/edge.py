"""The edge scenario: N camera streams at F frames per second feed one dynamic batcher in front of one model.

It is a **discrete-event simulation driven by measured compute times**, not a real-time run, because
(1) it is deterministic for a seed, so a report can be reproduced and a test can assert on it; (2) ten
seconds of streams simulate in milliseconds, which makes a sweep over dozens of batcher settings affordable;
(3) a real-time run on a shared or small CPU measures the neighbours' load and the feeder thread's sleep
jitter as much as the model. The simulator uses the live batcher's own rule (`BatchPolicy`) and queue bound,
and draws each batch's compute time from latencies measured on the artifact at that batch size (bootstrap
resampling, so the measured spread carries over). `replay` drives the real `Batcher` in real time with the
same arrivals, for a short check of the simulation (see benchmarks/bench_batcher.py).

Arrivals: `periodic` (each stream at a random phase, every 1/F s, plus a uniform capture jitter in
[0, jitter_ms)) or `poisson` (exponential gaps of mean 1/F per stream). End-to-end latency = queueing +
compute; a frame misses its deadline (the frame period unless given) when that exceeds it, and is dropped
when the queue is full. The setting sweep picks, among settings whose p99 latency fits the budget with no
frame dropped, the one that keeps the model least busy (every such setting serves the offered load, so the
one with the most compute headroom is best; larger batches are cheaper per image), counting utilizations
within 5 % as equal and then taking the lowest p99 (a longer delay is not worth a negligible saving).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..errors import DeploymtlError
from ..runtime.batcher import Batcher, QueueFullError
from ..runtime.policy import BatchPolicy
from .sweep import latency_summary

CDF_POINTS = 101  # latency quantiles 0..100 % stored for the CDF plot
UTILIZATION_TIE = 0.05  # utilizations within 5 % count as equal: not worth extra latency


@dataclass(frozen=True)
class EdgeScenario:
    streams: int = 4
    fps: float = 30.0
    arrival: Literal["periodic", "poisson"] = "periodic"
    jitter_ms: float = 2.0
    duration_s: float = 10.0
    deadline_ms: float | None = None
    max_batch: int = 4
    max_delay_ms: float = 5.0
    preferred: tuple[int, ...] = field(default=())
    max_queue: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.streams < 1 or not self.fps > 0 or not self.duration_s > 0 or self.jitter_ms < 0:
            raise DeploymtlError(f"edge scenario needs streams >= 1, fps > 0, duration > 0, jitter >= 0; got "
                                 f"{self.streams} streams at {self.fps} fps for {self.duration_s} s")
        if self.arrival not in ("periodic", "poisson"):
            raise DeploymtlError(f"unknown arrival process '{self.arrival}'", hint="expected periodic or poisson")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise DeploymtlError(f"deadline is {self.deadline_ms} ms", hint="expected > 0")
        self.policy()  # validates max_batch / delay / preferred sizes

    @property
    def deadline_s(self) -> float:
        return (self.deadline_ms if self.deadline_ms is not None else 1000.0 / self.fps) / 1000.0

    @property
    def queue_limit(self) -> int:
        return 8 * self.max_batch if self.max_queue is None else self.max_queue  # as the Batcher

    def policy(self) -> BatchPolicy:
        return BatchPolicy(self.max_batch, self.max_delay_ms / 1000.0, tuple(self.preferred))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"deadline_ms": self.deadline_s * 1000.0, "max_queue": self.queue_limit}


def arrivals(scn: EdgeScenario) -> np.ndarray:
    """Sorted frame arrival times in seconds (frames captured over [0, duration))."""
    rng = np.random.default_rng(scn.seed)
    period = 1.0 / scn.fps
    times = []
    for _ in range(scn.streams):
        if scn.arrival == "periodic":  # frames captured in [0, duration), each delivered up to jitter later
            t = rng.uniform(0, period) + np.arange(0.0, scn.duration_s, period)
            t = t[t < scn.duration_s]
            t = t + rng.uniform(0, scn.jitter_ms / 1000.0, size=t.size)
        else:
            t = np.cumsum(rng.exponential(period, size=int(scn.duration_s * scn.fps * 2 + 20)))
            t = t[t < scn.duration_s]
        times.append(t)
    return np.sort(np.concatenate(times))


class ComputeModel:
    """Compute time of a batch of b images, resampled from measured latencies at batch b."""

    def __init__(self, samples_s: dict[int, Sequence[float]]) -> None:
        self.samples = {int(b): np.asarray(s, dtype=np.float64) for b, s in samples_s.items() if len(s)}
        if not self.samples:
            raise DeploymtlError("the edge simulation needs measured compute times")

    def sizes(self) -> list[int]:
        return sorted(self.samples)

    def draw(self, b: int, rng: np.random.Generator) -> float:
        if b not in self.samples:
            raise DeploymtlError(f"no compute time measured at batch {b}", hint=f"measured: {self.sizes()}")
        s = self.samples[b]
        return float(s[rng.integers(s.size)])

    @classmethod
    def measure(cls, session: Any, sizes: Sequence[int], calls: int = 30, budget_s: float = 0.5,
                known: dict[int, Sequence[float]] | None = None, warmup: int = 2, seed: int = 0) -> ComputeModel:
        """Time up to `calls` inferences (at least 3, stopping after `budget_s`) at each size not in `known`."""
        samples = {b: list(v) for b, v in (known or {}).items()}
        for b in sizes:
            if b in samples:
                continue
            x = session.example(b, seed=seed)
            for _ in range(warmup):
                session.infer(x)
            runs: list[float] = []
            end = time.perf_counter() + budget_s
            while len(runs) < 3 or (len(runs) < calls and time.perf_counter() < end):
                t0 = time.perf_counter()
                session.infer(x)
                runs.append(time.perf_counter() - t0)
            samples[b] = runs
        return cls(samples)


def simulate(scn: EdgeScenario, compute: ComputeModel) -> dict[str, Any]:
    """Run the scenario through the batching rule with one model instance; returns the summary."""
    t_arr = arrivals(scn)
    rng = np.random.default_rng(scn.seed + 1)
    policy = scn.policy()
    n = t_arr.size
    start = np.full(n, np.nan)
    done = np.full(n, np.nan)
    queue: deque[int] = deque()
    dropped = 0
    batches: Counter[int] = Counter()
    busy = 0.0
    free_at = 0.0
    now = 0.0
    i = 0
    ones = [1] * (scn.max_batch + 1)
    while True:
        while i < n and t_arr[i] <= now:
            if len(queue) >= scn.queue_limit:
                dropped += 1
            else:
                queue.append(i)
            i += 1
        if queue and free_at <= now:
            k = policy.select(ones[:min(len(queue), scn.max_batch + 1)], t_arr[queue[0]], now)
            if k:
                ids = [queue.popleft() for _ in range(k)]
                c = compute.draw(k, rng)
                start[ids], done[ids] = now, now + c
                free_at, busy = now + c, busy + c
                batches[k] += 1
                continue
        events = [t_arr[i]] if i < n else []
        if free_at > now:
            events.append(free_at)
        elif queue:
            events.append(policy.due(t_arr[queue[0]]))
        if not events:
            break
        now = min(events)
    return summarize(scn, t_arr, done, start=start, dropped=dropped, batch_sizes=batches, busy_s=busy)


def summarize(scn: EdgeScenario, t_arr: np.ndarray, done: np.ndarray, *, start: np.ndarray | None, dropped: int,
              batch_sizes: Counter[int] | dict[int, int], busy_s: float) -> dict[str, Any]:
    """Latency percentiles, throughput, deadline misses, batch histogram; `done` is NaN for dropped frames."""
    ok = ~np.isnan(done)
    lat = done[ok] - t_arr[ok]
    total = int(t_arr.size)
    if not ok.any():
        raise DeploymtlError("the edge scenario completed no frame", hint="lower streams/fps or raise max_queue")
    span = float(done[ok].max() - t_arr.min())
    missed = int((lat > scn.deadline_s).sum())
    hist = {int(k): int(v) for k, v in sorted(dict(batch_sizes).items())}
    images = sum(k * v for k, v in hist.items())
    out = {
        "frames": total, "completed": int(ok.sum()), "dropped": int(dropped),
        "offered_fps": scn.streams * scn.fps, "throughput_fps": float(ok.sum() / span),
        "latency_ms": latency_summary(lat),
        "deadline_ms": scn.deadline_s * 1000.0, "deadline_missed": missed,
        "miss_rate": (missed + dropped) / total if total else 0.0,
        "utilization": float(busy_s / span), "batch_histogram": hist,
        "mean_batch": images / sum(hist.values()) if hist else 0.0,
        "cdf_ms": [float(v) for v in np.percentile(lat * 1e3, np.linspace(0, 100, CDF_POINTS))],
    }
    if start is not None:
        out["queue_wait_ms"] = float(np.mean(start[ok] - t_arr[ok]) * 1e3)
        out["compute_ms"] = float(np.mean(done[ok] - start[ok]) * 1e3)
    return out


def sweep_settings(scn: EdgeScenario, compute: ComputeModel, budget_ms: float | None = None,
                   max_batches: Sequence[int] | None = None, delays_ms: Sequence[float] | None = None
                   ) -> dict[str, Any]:
    """Simulate a grid of (max_batch, max_delay_ms); pick the best under the p99 latency budget."""
    budget = scn.deadline_s * 1000.0 if budget_ms is None else float(budget_ms)
    if not budget > 0:
        raise DeploymtlError(f"latency budget is {budget_ms} ms", hint="expected > 0")
    max_batches = sorted(set(max_batches or [b for b in compute.sizes() if b & (b - 1) == 0] + [scn.max_batch]))
    delays_ms = sorted(set(delays_ms if delays_ms is not None else [0.0, 1.0, 2.0, 5.0, 10.0, 20.0]
                           + [scn.max_delay_ms]))
    grid = []
    for mb in max_batches:
        for d in delays_ms:
            s = replace(scn, max_batch=mb, max_delay_ms=d, preferred=tuple(p for p in scn.preferred if p <= mb))
            r = simulate(s, compute)
            grid.append({"max_batch": mb, "max_delay_ms": d, "p50_ms": r["latency_ms"]["p50_ms"],
                         "p99_ms": r["latency_ms"]["p99_ms"], "throughput_fps": r["throughput_fps"],
                         "utilization": r["utilization"], "mean_batch": r["mean_batch"],
                         "deadline_missed": r["deadline_missed"], "dropped": r["dropped"],
                         "feasible": r["latency_ms"]["p99_ms"] <= budget and r["dropped"] == 0})
    feasible = [g for g in grid if g["feasible"]]
    best = None
    if feasible:  # the least busy settings (within UTILIZATION_TIE), then the lowest p99 among them
        least = min(g["utilization"] for g in feasible)
        tied = [g for g in feasible if g["utilization"] <= least * (1 + UTILIZATION_TIE)]
        best = min(tied, key=lambda g: g["p99_ms"])
    return {"budget_ms": budget, "rule": f"feasible: p99 <= budget and no frame dropped; best: lowest utilization "
            f"(within {UTILIZATION_TIE:.0%}), then lowest p99", "grid": grid, "best": best,
            "closest": None if best else min(grid, key=lambda g: g["p99_ms"])}


def replay(session: Any, scn: EdgeScenario, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Real-time run: a feeder thread submits the scenario's frames to a real `Batcher` at their arrival times."""
    t_arr = arrivals(scn)
    busy = [0.0]

    def timed(x: np.ndarray) -> dict[str, np.ndarray]:
        t0 = clock()
        out = session.infer(x)
        busy[0] += clock() - t0
        return out

    done = np.full(t_arr.size, np.nan)
    dropped = 0
    image = session.example(1, seed=scn.seed)[0]
    batcher = Batcher(timed, input_spec=session.input_spec, max_batch=scn.max_batch, max_delay_ms=scn.max_delay_ms,
                      preferred_batch_sizes=scn.preferred, max_queue=scn.queue_limit)

    def on_done(idx: int) -> Callable[[Any], None]:
        def cb(_fut: Any) -> None:
            done[idx] = clock() - t0
        return cb

    t0 = clock()
    for idx, ta in enumerate(t_arr):
        delay = ta - (clock() - t0)
        if delay > 0:
            time.sleep(delay)
        try:
            batcher.submit(image).add_done_callback(on_done(idx))
        except QueueFullError:
            dropped += 1
    batcher.close(drain=True)  # returns once every queued frame ran and its callback fired
    return summarize(scn, t_arr, done, start=None, dropped=dropped, batch_sizes=batcher.stats()["batch_sizes"],
                     busy_s=busy[0]) | {"mode": "real-time"}
