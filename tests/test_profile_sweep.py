"""Batch-sweep measurement: statistics and the stability rule, on a fake timer (exact, no real waiting)."""

from __future__ import annotations

import numpy as np
import pytest

from deploymtl.errors import DeploymtlError
from deploymtl.profile.sweep import SweepSettings, latency_summary, measure, sweep
from deploymtl.runtime import load
from deploymtl.runtime.toy import toy_onnx

TICK = 1 / 1024  # binary-exact seconds, so window boundaries fall exactly


class FakeTimer:
    """A clock that advances only when the measured function 'runs' for latency(t)."""

    def __init__(self, latency) -> None:
        self.t = 0.0
        self.latency = latency
        self.calls = 0

    def __call__(self) -> float:
        return self.t

    def run(self) -> None:
        self.calls += 1
        self.t += self.latency(self.t)


def test_latency_summary_is_exact():
    s = latency_summary([0.001, 0.002, 0.003, 0.004])
    assert s["n"] == 4 and s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(4)
    assert s["mean_ms"] == pytest.approx(2.5) and s["p50_ms"] == pytest.approx(2.5)
    assert s["p90_ms"] == pytest.approx(3.7) and s["p99_ms"] == pytest.approx(3.97)
    assert s["cv"] == pytest.approx(np.std([1, 2, 3, 4]) / 2.5)
    with pytest.raises(DeploymtlError, match="no latency samples"):
        latency_summary([])


def test_constant_latency_is_stable_after_two_windows():
    timer = FakeTimer(lambda t: TICK)
    m = measure(timer.run, SweepSettings(duration_s=8 * TICK, warmup=3, min_calls=1), timer)
    assert m["stable"] and m["windows"] == 2 and m["cv"] == 0.0
    assert timer.calls == 3 + 16 and len(m["samples_s"]) == 16  # warm-up calls are not samples
    assert m["window_medians_ms"] == pytest.approx([TICK * 1e3] * 2)


def test_alternating_windows_never_agree_and_report_their_spread():
    window = 8 * TICK
    timer = FakeTimer(lambda t: TICK if int(t / window) % 2 == 0 else 2 * TICK)
    m = measure(timer.run, SweepSettings(duration_s=window, warmup=0, min_calls=1, max_windows=5), timer)
    assert not m["stable"] and m["windows"] == 5
    medians = np.array([1, 2, 1, 2, 1]) * TICK * 1e3
    assert m["window_medians_ms"] == pytest.approx(list(medians))
    assert m["cv"] == pytest.approx(medians.std() / medians.mean())
    assert len(m["samples_s"]) == 4 + 8  # the last two windows: 2-tick calls, then 1-tick calls


def test_min_calls_bounds_a_slow_window():
    timer = FakeTimer(lambda t: 1.0)  # one call outlasts the whole window
    m = measure(timer.run, SweepSettings(duration_s=0.001, warmup=0, min_calls=3), timer)
    assert m["stable"] and len(m["samples_s"]) == 6


def test_invalid_settings():
    with pytest.raises(DeploymtlError, match="batch sizes"):
        SweepSettings(batch_sizes=(0, 2))
    with pytest.raises(DeploymtlError, match="duration"):
        SweepSettings(duration_s=0)
    with pytest.raises(DeploymtlError, match="max_windows >= 2"):
        SweepSettings(max_windows=1)


def test_sweep_on_a_real_session(tmp_path):
    s = load(toy_onnx(tmp_path / "m.onnx", max_batch=4), threads=1)
    rows, warnings = sweep(s, SweepSettings(batch_sizes=(1, 4), duration_s=0.01, warmup=1))
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        lat = r["latency_ms"]
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert r["throughput_ips"] == pytest.approx(r["batch"] * len(r["samples_ms"]) / sum(r["samples_ms"]) * 1e3)
        assert r["windows"] >= 2 and (r["stable"] or any(f"batch {r['batch']}:" in w for w in warnings))
    with pytest.raises(DeploymtlError, match=r"batch sizes \[8\] exceed the maximum batch 4"):
        sweep(s, SweepSettings(batch_sizes=(1, 8), duration_s=0.01))
