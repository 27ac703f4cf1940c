"""`deploymtl profile --url URL --model NAME [ARTIFACT]`: a load test of a model served by Triton, and the same load
on deploymtl's in-process `Batcher` beside it.

Served (remote.py, loadgen.py), one-image requests like camera frames:
- a concurrency sweep: at each level c, c clients in closed loop, measured in windows by the profiler's
  stability rule; client-side latency percentiles and throughput; Triton's own figures for the same window
  from its statistics API (queue and compute times per request, executed batch sizes);
- the request-rate mode (the edge scenario, `--streams N --fps F`): frames released on the scenario's
  arrival times (`edge.arrivals`, open loop), end-to-end latency per frame and deadline misses.

In-process, when ARTIFACT is given: the artifact's `Session` behind a `Batcher` with the served model's batching
(max_batch_size, preferred sizes, queue delay, read from the server's model config), under the same closed-loop
levels (threads calling `Batcher.infer`) and the same frames in real time (`edge.replay`). The two sides take
turns level by level, so a machine whose load drifts (a shared CPU) weighs on both alike. The ratio of the two
throughputs is what serving through Triton costs (client, protocol, Triton's front end, copies) at equal batching.

Statistics need the `statistics` endpoint; when the server refuses it (a token), the client-side figures are
still measured and a warning says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import DeploymtlError
from ..runtime.batcher import Batcher
from ..runtime.session import load
from .edge import EdgeScenario, arrivals, replay, summarize
from .loadgen import closed_loop, open_loop, short_error
from .profiler import ProfileOptions, environment
from .remote import RemoteModel, stats_delta

SERVED_FORMAT = "deploymtl.profile.served/1"


@dataclass(frozen=True)
class ServedOptions:
    url: str
    model: str
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.concurrency or any(not isinstance(c, int) or c < 1 for c in self.concurrency):
            raise DeploymtlError(f"--concurrency {list(self.concurrency)}", hint="expected integers >= 1, e.g. 1,4,16")


class _Stats:
    """Statistics snapshots of one remote model; None (and one warning) when the server refuses them."""

    def __init__(self, remote: RemoteModel, warnings: list[str]) -> None:
        self.remote = remote
        self.warnings = warnings
        self.available = True

    def snapshot(self) -> dict[str, Any] | None:
        if not self.available:
            return None
        try:
            return self.remote.statistics()
        except Exception as exc:  # noqa: BLE001 - a restricted endpoint, or a server without the extension
            self.available = False
            self.warnings.append(f"server statistics unavailable ({short_error(exc)}); client-side figures only "
                                 "(pass the token with --header if the endpoint is restricted)")
            return None

    def delta(self, before: dict[str, Any] | None) -> dict[str, Any] | None:
        after = self.snapshot()
        return stats_delta(before, after) if before is not None and after is not None else None


@dataclass
class _Side:
    """One side of the comparison: how a worker makes its caller, where batch counters come from, the rate mode."""

    label: str
    factory: Callable[[], Any]
    stats: Any  # snapshot() and delta(before): Triton's statistics or the Batcher's counters
    rate: Callable[[EdgeScenario], dict[str, Any]]


def profile_served(served: ServedOptions, options: ProfileOptions, artifact: Path | None = None,
                   log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Measure the served model, and the artifact in-process when given, level by level (so a drifting machine
    load hits both sides alike); returns the JSON-able profile."""
    remote = RemoteModel.connect(served.url, served.model, served.headers)
    warnings: list[str] = []
    batching = remote.batching()
    scenario = _scenario(options, batching) if options.edge else None
    stats = _Stats(remote, warnings)
    factory = remote.make_call(remote.example(options.seed))
    sides = [_Side("served", factory, stats, lambda scn: _served_rate(factory, scn, stats))]
    result: dict[str, Any] = {
        "format": SERVED_FORMAT, "deploymtl_version": __version__, "options": options.model_dump() | asdict(served),
        "environment": environment(),
        "server": {"url": served.url, "protocol": remote.protocol, "model": remote.model, "input": {
            "name": remote.input_name, "datatype": remote.datatype, "dims": list(remote.dims)},
            "outputs": remote.outputs, "batching": batching},
        "served": {}, "in_process": None, "warnings": warnings}
    with contextlib.ExitStack() as stack:
        if artifact is not None:
            local = stack.enter_context(_InProcess(artifact, remote, batching, served, options))
            sides.append(_Side("in-process", local.factory, _BatcherStats(local.batcher), local.replay))
            result["in_process"] = local.describe()
        rows: dict[str, list[dict[str, Any]]] = {side.label: [] for side in sides}
        for c in served.concurrency:
            for side in sides:
                log(f"{side.label}: concurrency {c}")
                rows[side.label].append(_level(side, c, options, warnings))
        rates: dict[str, Any] = {}
        for side in sides if scenario is not None else []:
            log(f"{side.label}: {scenario.streams} streams x {scenario.fps:g} fps for {scenario.duration_s:g} s")
            rates[side.label] = side.rate(scenario) | {"scenario": scenario.to_dict()}
    result["served"] = {"sweep": rows["served"], "rate": rates.get("served")}
    if result["in_process"] is not None:
        result["in_process"] |= {"sweep": rows["in-process"], "rate": rates.get("in-process")}
    result["comparison"] = compare_served(result)
    return result


def _scenario(options: ProfileOptions, batching: dict[str, Any]) -> EdgeScenario:
    """The edge scenario with the served model's batching (what the in-process replay's batcher uses)."""
    mbs = max(1, batching["max_batch_size"])
    return EdgeScenario(streams=options.streams, fps=options.fps, arrival=options.arrival, jitter_ms=options.jitter_ms,
                        duration_s=options.edge_duration_s, deadline_ms=options.deadline_ms, max_batch=mbs,
                        max_delay_ms=batching["max_queue_delay_us"] / 1000.0,
                        preferred=tuple(p for p in batching["preferred"] if p <= mbs), seed=options.seed)


def _level(side: _Side, c: int, options: ProfileOptions, warnings: list[str]) -> dict[str, Any]:
    """One closed-loop level on one side, with the batch counters of the same window."""
    settings = options.sweep_settings()
    before: dict[str, Any] = {}
    row = closed_loop(side.factory, c, settings, on_start=lambda: before.update(snap=side.stats.snapshot()))
    row["throughput_ips"] = row["throughput_rps"]  # one image per request
    row["server"] = side.stats.delta(before.get("snap"))
    if not row["stable"]:
        warnings.append(f"{side.label} concurrency {c}: latency not stable after {row['windows']} windows of "
                        f"{settings.duration_s:g} s (coefficient of variation of window medians {row['cv']:.1%})")
    if row["errors"]:
        warnings.append(f"{side.label} concurrency {c}: {row['errors']} request(s) failed, e.g. {row['error_sample']}")
    return row


def _served_rate(factory: Callable[[], Any], scn: EdgeScenario, stats: _Stats) -> dict[str, Any]:
    t_arr = arrivals(scn)
    before: dict[str, Any] = {}
    latency, errors = open_loop(factory, t_arr, workers=max(4, 2 * scn.streams),
                                on_start=lambda: before.update(snap=stats.snapshot()))
    server = stats.delta(before.get("snap"))
    out = summarize(scn, t_arr, t_arr + latency, start=None, dropped=int(np.isnan(latency).sum()),
                    batch_sizes=(server or {}).get("batch_histogram", {}),
                    busy_s=(server or {}).get("busy_s", 0.0))
    return out | {"mode": "real-time, open loop", "failed": len(errors), "error_sample": errors[0] if errors else None,
                  "server": server}


class _BatcherStats:
    """The Batcher's batch-size counters as a stats source for `_level`."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher

    def snapshot(self) -> dict[str, Any]:
        return self.batcher.stats()

    def delta(self, before: dict[str, Any] | None) -> dict[str, Any] | None:
        if before is None:
            return None
        after = self.batcher.stats()
        hist = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
        hist = {k: v for k, v in sorted(hist.items()) if v}
        batches, images = after["batches"] - before["batches"], after["images"] - before["images"]
        return {"executions": batches, "inferences": images, "avg_batch": images / batches if batches else None,
                "batch_histogram": hist}


class _InProcess:
    """The artifact's session behind a Batcher with the served model's batching, for the in-process side."""

    def __init__(self, artifact: Path, remote: RemoteModel, batching: dict[str, Any], served: ServedOptions,
                 options: ProfileOptions) -> None:
        self.artifact = artifact
        self.mbs = max(1, batching["max_batch_size"])
        torch_file = artifact.suffix.lower() == ".pt"
        self.session = load(artifact, provider=options.provider if artifact.suffix.lower() == ".onnx" else "cpu",
                            device=options.torch_device, threads=options.threads,
                            max_batch=self.mbs if torch_file else None)
        s = self.session.input_spec
        if (s.channels, s.height, s.width) != remote.dims:
            self.session.close()
            raise DeploymtlError(f"{artifact} takes images {s.channels}x{s.height}x{s.width}, the served model "
                                 f"'{remote.model}' takes {'x'.join(map(str, remote.dims))}",
                                 hint="pass the artifact the server serves")
        self.delay_ms = batching["max_queue_delay_us"] / 1000.0
        self.preferred = tuple(p for p in batching["preferred"] if p <= self.mbs)
        try:
            self.batcher = Batcher(self.session, max_batch=self.mbs, max_delay_ms=self.delay_ms,
                                   preferred_batch_sizes=self.preferred,
                                   max_queue=max(8 * self.mbs, 2 * max(served.concurrency)))
        except BaseException:
            self.session.close()
            raise
        self.image = self.session.example(1, seed=options.seed)

    def factory(self) -> Any:
        return lambda: self.batcher.infer(self.image)

    def replay(self, scn: EdgeScenario) -> dict[str, Any]:
        return replay(self.session, scn)

    def describe(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), **self.session.info(),
                "batcher": {"max_batch": self.mbs, "max_delay_ms": self.delay_ms, "preferred": list(self.preferred)}}

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.batcher.close(drain=True)
        finally:
            self.session.close()


def compare_served(result: dict[str, Any]) -> dict[str, Any]:
    """Served vs in-process per concurrency level: throughput ratio and p99 side by side; and the rate modes."""
    inproc = result.get("in_process") or {}
    local = {r["concurrency"]: r for r in inproc.get("sweep") or []}
    rows = []
    for r in result["served"]["sweep"]:
        other = local.get(r["concurrency"])
        rows.append({"concurrency": r["concurrency"], "served_ips": r["throughput_ips"],
                     "served_p99_ms": r["latency_ms"]["p99_ms"],
                     "in_process_ips": other["throughput_ips"] if other else None,
                     "in_process_p99_ms": other["latency_ms"]["p99_ms"] if other else None,
                     "throughput_ratio": r["throughput_ips"] / other["throughput_ips"] if other else None})
    ratios = [r["throughput_ratio"] for r in rows if r["throughput_ratio"] is not None]
    rate = {}
    for label, entry in (("served", result["served"].get("rate")), ("in_process", inproc.get("rate"))):
        if entry:
            rate[label] = {"p99_ms": entry["latency_ms"]["p99_ms"], "deadline_missed": entry["deadline_missed"],
                           "frames": entry["frames"], "throughput_fps": entry["throughput_fps"]}
    return {"rows": rows, "min_throughput_ratio": min(ratios) if ratios else None, "rate": rate}
