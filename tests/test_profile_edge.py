"""The edge scenario: arrivals, the discrete-event simulation (hand-checked cases and agreement with the live
batcher's rule), the batcher-setting sweep under a budget, and a short real-time replay."""

from __future__ import annotations

import numpy as np
import pytest

from deploymtl.backends.base import InputSpec
from deploymtl.errors import DeploymtlError
from deploymtl.profile.edge import ComputeModel, EdgeScenario, arrivals, replay, simulate, sweep_settings
from deploymtl.runtime import Batcher, ManualClock, load
from deploymtl.runtime.toy import toy_onnx


def constant(times_ms: dict[int, float]) -> ComputeModel:
    return ComputeModel({b: [t / 1000.0] for b, t in times_ms.items()})


def test_periodic_arrivals_keep_each_streams_period():
    scn = EdgeScenario(streams=3, fps=25, jitter_ms=0.0, duration_s=2.0, seed=4)
    t = arrivals(scn)
    assert t.size == 3 * 50 and np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() < 2.0
    phases = sorted({round(v % 0.04, 9) for v in t})
    assert len(phases) == 3  # three streams, each strictly periodic at 40 ms
    jittered = arrivals(EdgeScenario(streams=3, fps=25, jitter_ms=5.0, duration_s=2.0, seed=4))
    assert np.all((jittered - t >= 0) & (jittered - t < 0.005))  # same phases, plus [0, 5) ms


def test_poisson_arrivals_are_reproducible():
    scn = EdgeScenario(streams=4, fps=30, arrival="poisson", duration_s=5.0, seed=1)
    a, b = arrivals(scn), arrivals(scn)
    np.testing.assert_array_equal(a, b)
    assert 480 < a.size < 720  # 600 expected; a Poisson count this far off would be a bug
    gaps = np.diff(np.sort(a))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.15)  # exponential gaps: cv ~ 1


def test_a_lone_frame_waits_the_full_delay_then_computes():
    scn = EdgeScenario(streams=1, fps=10, jitter_ms=0.0, duration_s=1.0, max_batch=4, max_delay_ms=5.0)
    r = simulate(scn, constant({1: 1.0, 2: 1.5, 3: 2.0, 4: 2.5}))
    assert r["frames"] == r["completed"] == 10 and r["dropped"] == 0
    assert r["latency_ms"]["min_ms"] == pytest.approx(6.0) and r["latency_ms"]["max_ms"] == pytest.approx(6.0)
    assert r["queue_wait_ms"] == pytest.approx(5.0) and r["compute_ms"] == pytest.approx(1.0)
    assert r["batch_histogram"] == {1: 10} and r["deadline_missed"] == 0 and r["deadline_ms"] == pytest.approx(100)
    greedy = simulate(EdgeScenario(streams=1, fps=10, jitter_ms=0.0, duration_s=1.0, max_delay_ms=0.0),
                      constant({1: 1.0, 2: 1.5, 3: 2.0, 4: 2.5}))
    assert greedy["latency_ms"]["p99_ms"] == pytest.approx(1.0)


def test_deadline_misses_count_frames_later_than_the_period():
    scn = EdgeScenario(streams=1, fps=100, jitter_ms=0.0, duration_s=1.0, max_batch=1, max_delay_ms=0.0,
                       deadline_ms=2.5)
    r = simulate(scn, constant({1: 3.0}))  # 3 ms of compute per 10 ms frame: every frame is late, none queued
    assert r["deadline_missed"] == r["frames"] == 100 and r["miss_rate"] == 1.0
    assert r["utilization"] == pytest.approx(0.3, abs=0.01)


def test_batching_rescues_an_overloaded_model():
    compute = constant({1: 2.0, 2: 2.2, 3: 2.4, 4: 2.6})  # 2 ms per frame alone, 1.1 ms per frame in pairs
    base = dict(streams=1, fps=1000, jitter_ms=0.0, duration_s=0.5, max_delay_ms=1.0)
    alone = simulate(EdgeScenario(max_batch=1, **base), compute)
    batched = simulate(EdgeScenario(max_batch=4, **base), compute)
    assert alone["dropped"] > 0 and alone["utilization"] == pytest.approx(1.0, abs=0.01)
    # steady state: a batch of k takes 2 + 0.2 (k - 1) ms, in which that many frames arrive -> k ~ 2.25
    assert batched["dropped"] == 0 and batched["mean_batch"] == pytest.approx(2.25, abs=0.05)
    assert batched["throughput_fps"] == pytest.approx(1000, rel=0.02)


@pytest.mark.parametrize("preferred, fps", [((2,), 40.0), ((), 80.0)])
def test_simulation_batches_exactly_as_the_live_batcher_would(preferred, fps):
    """With zero compute time the simulator's batches must equal a ManualClock batcher fed the same arrivals."""
    scn = EdgeScenario(streams=5, fps=fps, arrival="poisson", duration_s=1.0, max_batch=4, max_delay_ms=8.0,
                       preferred=preferred, seed=3)
    sim = simulate(scn, constant({b: 0.0 for b in range(1, 5)}))
    assert len(sim["batch_histogram"]) >= 2
    sizes: list[int] = []
    clock = ManualClock()
    b = Batcher(lambda x: sizes.append(x.shape[0]) or {"y": x}, input_spec=InputSpec(channels=1, height=1, width=1),
                max_batch=4, max_delay_ms=8.0, preferred_batch_sizes=preferred, clock=clock, start=False)
    x = np.zeros((1, 1, 1), np.float32)
    for t in arrivals(scn):
        while (due := b.next_event()) is not None and due < t:  # batches that fall due before this frame
            clock.now = due
            b.step()
        clock.now = t
        b.submit(x)
        b.step()
    while (due := b.next_event()) is not None:
        clock.now = due
        b.step()
    hist: dict[int, int] = {}
    for s in sizes:
        hist[s] = hist.get(s, 0) + 1
    assert hist == sim["batch_histogram"] and sum(sizes) == sim["frames"]


def test_setting_sweep_finds_the_best_under_budget():
    compute = constant({1: 2.0, 2: 2.2, 3: 2.4, 4: 2.6, 8: 3.5, 5: 2.8, 6: 3.0, 7: 3.2})
    scn = EdgeScenario(streams=2, fps=300, jitter_ms=0.5, duration_s=1.0, max_batch=4, max_delay_ms=2.0)
    st = sweep_settings(scn, compute, budget_ms=15.0)
    assert {(g["max_batch"], g["max_delay_ms"]) for g in st["grid"]} >= {(1, 0.0), (8, 20.0)}
    one = [g for g in st["grid"] if g["max_batch"] == 1]
    assert all(not g["feasible"] for g in one)  # 600 fps at 2 ms each cannot be served one by one
    best = st["best"]
    assert best is not None and best["feasible"] and best["max_batch"] > 1 and best["p99_ms"] <= 15.0
    feasible = [g for g in st["grid"] if g["feasible"]]
    assert best["utilization"] <= min(g["utilization"] for g in feasible) * 1.05
    tight = sweep_settings(scn, compute, budget_ms=0.5)
    assert tight["best"] is None and tight["closest"]["p99_ms"] == min(g["p99_ms"] for g in tight["grid"])
    with pytest.raises(DeploymtlError, match="latency budget"):
        sweep_settings(scn, compute, budget_ms=-1)


def test_invalid_scenarios():
    with pytest.raises(DeploymtlError, match="streams >= 1"):
        EdgeScenario(streams=0)
    with pytest.raises(DeploymtlError, match="unknown arrival process 'bursty'"):
        EdgeScenario(arrival="bursty")
    with pytest.raises(DeploymtlError, match="max_batch"):
        EdgeScenario(max_batch=0)
    with pytest.raises(DeploymtlError, match="no compute time measured at batch 3"):
        simulate(EdgeScenario(streams=8, fps=1000, duration_s=0.1, max_batch=3), constant({1: 1.0}))


def test_real_time_replay_serves_every_frame(tmp_path):
    s = load(toy_onnx(tmp_path / "m.onnx", max_batch=4), threads=1)
    scn = EdgeScenario(streams=4, fps=30, duration_s=0.3, max_batch=4, max_delay_ms=5.0)
    r = replay(s, scn)
    assert r["mode"] == "real-time" and r["completed"] + r["dropped"] == r["frames"] == arrivals(scn).size
    assert sum(k * v for k, v in r["batch_histogram"].items()) == r["completed"]
    assert r["latency_ms"]["min_ms"] > 0
