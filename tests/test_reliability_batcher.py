"""The batcher under abuse: cancels, timeouts, storms, overload, failing backends and callbacks, faults in its own
bookkeeping. Every case checks that each accepted request ended exactly once, that the counters say how, and that
the batcher still serves afterwards.

Invariant checked everywhere: requests == served + failed + cancelled + timed_out + queued + in_flight.
`DEPLOYMTL_FULL_LOAD=1` runs the toy-ONNX load test at the full 16 x 1000 requests (default 16 x 100; the numpy
model always runs 16 x 1000).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from deploymtl.backends.base import InputSpec
from deploymtl.env import env_flag
from deploymtl.errors import DeploymtlError
from deploymtl.runtime import Batcher, BatcherClosedError, ManualClock, QueueFullError, RequestTimeoutError

SPEC = InputSpec(channels=2, height=3, width=3, max_batch=8)
JOIN_S = 60  # no test waits longer for a thread; a thread still alive after it is a deadlock
OUTCOMES = ("served", "failed", "cancelled", "timed_out")


def model(x: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic and different for every image, so a result given to the wrong request is caught."""
    return {"affine": 2 * x + 1, "total": x.sum(axis=(1, 2, 3)), "id": x[:, 0, 0, 0].copy()}


def image(key: float) -> np.ndarray:
    x = np.full((2, 3, 3), key, np.float32)
    x[1] += np.arange(9, dtype=np.float32).reshape(3, 3)
    return x


def direct(x: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in model(x[None]).items()}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def balanced(s: dict[str, Any]) -> bool:
    return s["requests"] == sum(s[k] for k in OUTCOMES) + s["queued"] + s["in_flight"]


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a client thread is stuck"


def still_serves(b: Batcher) -> int:
    """Fresh requests after the abuse get their own results and nothing is left waiting. A full batch of them,
    so that even a batcher with a long max_delay sends it at once; returns how many."""
    before = b.stats()["served"]
    keys = [4242 + i for i in range(b.policy.target)]
    futs = [b.submit(image(k)) for k in keys]
    assert [same(f.result(timeout=JOIN_S), direct(image(k))) for k, f in zip(keys, futs, strict=True)] == \
        [True] * len(keys)
    s = b.stats()
    assert s["served"] == before + len(keys) and s["queued"] == 0 and s["in_flight"] == 0 and balanced(s)
    assert b._thread.is_alive()
    return len(keys)


class Sampler:
    """Reads stats() from another thread while a storm runs: the invariant must hold in every snapshot."""

    def __init__(self, b: Batcher) -> None:
        self.b, self.samples, self.broken = b, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self.b.stats()
            self.samples += 1
            if not balanced(s) or min(s[k] for k in (*OUTCOMES, "queued", "in_flight")) < 0:
                self.broken.append(s)
            time.sleep(0.0005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(JOIN_S)
        assert self.samples > 0 and self.broken == []


# ------------------------------------------------------------------------------------------------- cancel
@pytest.mark.parametrize("which", [0, 1, 2])
def test_cancelling_a_queued_request_takes_it_out_and_the_others_are_served(which):
    """The reported case (three requests, cancel the second while queued) for each position, deterministic."""
    calls: list[int] = []
    clock = ManualClock()
    b = Batcher(lambda x: calls.append(len(x)) or model(x), input_spec=SPEC, max_batch=8, max_delay_ms=10,
                clock=clock, start=False)
    futs = [b.submit(image(i)) for i in range(3)]
    assert futs[which].cancel()
    assert b.queued_images == 2 and b.stats()["cancelled"] == 1  # out of the queue at once, not at the next batch
    assert concurrent.futures.wait([futs[which]], timeout=0).done == {futs[which]}
    clock.advance(0.010)
    assert b.step() == 1 and calls == [2]
    for i, f in enumerate(futs):
        if i != which:
            assert same(f.result(timeout=0), direct(image(i)))
    assert futs[which].cancel() and futs[which].cancelled()  # cancelling again: still cancelled, counted once
    s = b.stats()
    assert (s["requests"], s["served"], s["cancelled"], s["queued"]) == (3, 2, 1, 0) and balanced(s)
    f = b.submit(image(7))
    clock.advance(0.010)
    assert b.step() == 1 and same(f.result(timeout=0), direct(image(7)))


def test_cancelling_a_queued_request_with_a_worker_thread():
    with Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=50) as b:
        futs = [b.submit(image(i)) for i in range(3)]
        assert futs[1].cancel()
        assert same(futs[0].result(timeout=JOIN_S), direct(image(0)))
        assert same(futs[2].result(timeout=JOIN_S), direct(image(2)))
        extra = still_serves(b)
        s = b.stats()
    assert (s["requests"], s["served"], s["cancelled"]) == (3 + extra, 2 + extra, 1) and balanced(s)


def test_cancel_after_the_batch_took_the_request_but_before_it_ran():
    """The race window between taking a batch and starting it, opened on purpose."""
    calls: list[int] = []
    clock = ManualClock()
    b = Batcher(lambda x: calls.append(len(x)) or model(x), input_spec=SPEC, max_batch=3, max_delay_ms=10,
                clock=clock, start=False)
    futs = [b.submit(image(i)) for i in range(3)]
    start = b._start
    b._start = lambda batch: (batch[1].future.cancel(), start(batch))[1]
    assert b.step() == 1 and calls == [2]
    assert futs[1].cancelled() and concurrent.futures.wait([futs[1]], timeout=0).done == {futs[1]}
    assert same(futs[2].result(timeout=0), direct(image(2)))
    s = b.stats()
    assert (s["served"], s["cancelled"], s["in_flight"]) == (2, 1, 0) and balanced(s)


# ----------------------------------------------------------------------------------------------- timeouts
def test_infer_that_stops_waiting_for_a_running_request_counts_it_timed_out_and_drops_its_result():
    release = threading.Event()

    def slow(x: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(JOIN_S)
        return model(x)

    with Batcher(slow, input_spec=SPEC, max_batch=8, max_delay_ms=0) as b:
        fut = b.submit(image(1))  # runs, blocked on `release`
        with pytest.raises(RequestTimeoutError, match="within 0.05 s"):
            b.infer(image(2), timeout=0.05)  # queued behind it, withdrawn
        stuck = b.submit(image(3))
        deadline = time.monotonic() + JOIN_S
        release.set()
        assert same(fut.result(timeout=JOIN_S), direct(image(1)))
        assert same(stuck.result(timeout=JOIN_S), direct(image(3)))
        while b.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.001)
        s = b.stats()
    assert (s["requests"], s["served"], s["timed_out"], s["queued"], s["in_flight"]) == (3, 2, 1, 0, 0)


def test_infer_abandons_a_request_while_it_runs():
    """The caller's timeout passes while its request is in the running batch: RequestTimeoutError for the
    caller, the computed result is dropped, and it counts once, as timed out."""
    started, release = threading.Event(), threading.Event()

    def slow(x: np.ndarray) -> dict[str, np.ndarray]:
        started.set()
        release.wait(JOIN_S)
        return model(x)

    with Batcher(slow, input_spec=SPEC, max_batch=8, max_delay_ms=1) as b:
        errors: list[BaseException] = []

        def caller(_: int) -> None:
            try:
                b.infer(image(5), timeout=0.2)
            except RequestTimeoutError as exc:
                errors.append(exc)

        t = threading.Thread(target=caller, args=(0,))
        t.start()
        assert started.wait(JOIN_S)
        t.join(JOIN_S)
        assert len(errors) == 1 and b.stats()["timed_out"] == 1 and b.stats()["in_flight"] == 0
        release.set()
        extra = still_serves(b)
        s = b.stats()
    assert (s["requests"], s["served"], s["timed_out"]) == (1 + extra, extra, 1) and balanced(s)


def test_deadline_passing_while_the_batch_runs_still_delivers():
    """A request's deadline bounds its wait in the queue; once its batch runs it completes."""
    clock = ManualClock()

    def slow(x: np.ndarray) -> dict[str, np.ndarray]:
        clock.advance(1.0)  # the batch takes far longer than the timeout
        return model(x)

    b = Batcher(slow, input_spec=SPEC, max_batch=2, max_delay_ms=10, clock=clock, start=False)
    futs = [b.submit(image(i), timeout=0.005) for i in range(2)]
    late = b.submit(image(9), timeout=0.005)  # queued behind the full batch: expires while it runs
    assert b.step() == 1
    assert [same(f.result(timeout=0), direct(image(i))) for i, f in enumerate(futs)] == [True, True]
    with pytest.raises(RequestTimeoutError, match="in the batcher queue"):
        late.result(timeout=0)
    s = b.stats()
    assert (s["served"], s["timed_out"], s["queued"]) == (2, 1, 0) and balanced(s)


# ------------------------------------------------------------------------------------------------- storms
def _infer_storm(b: Batcher, threads: int, calls: int, timeouts: tuple[float, float]) -> Counter[str]:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(k)
        for j in range(calls):
            x = image(1000 * k + j)
            try:
                out = b.infer(x, timeout=rng.uniform(*timeouts))
                kind = "served" if same(out, direct(x)) else "wrong"
            except RequestTimeoutError:
                kind = "timed_out"
            except QueueFullError:
                kind = "rejected"
            with lock:
                seen[kind] += 1

    run_threads(threads, client)
    return seen


@pytest.mark.parametrize("max_delay_ms, max_queue, timeouts", [
    (30.0, 512, (0.002, 0.018)),  # the reported storm: every timeout shorter than the delay
    (5.0, 16, (0.001, 0.010)),  # a small queue: rejections mixed in
    (0.0, 64, (0.002, 0.018)),  # no delay: the idle fast path races the worker
])
def test_timeout_storm_then_the_queue_is_empty_and_the_next_request_is_served(max_delay_ms, max_queue, timeouts):
    with Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=max_delay_ms, max_queue=max_queue) as b:
        with Sampler(b):
            seen = _infer_storm(b, threads=16, calls=40, timeouts=timeouts)
        s = b.stats()
        assert seen["wrong"] == 0 and sum(seen.values()) == 16 * 40
        assert (s["served"], s["timed_out"], s["rejected"]) == (seen["served"], seen["timed_out"], seen["rejected"])
        assert s["requests"] == seen["served"] + seen["timed_out"] and s["failed"] == s["cancelled"] == 0
        assert s["queued"] == 0 and s["in_flight"] == 0 and b.queued_images == 0
        still_serves(b)


def test_submit_and_cancel_from_other_threads_storm():
    """8 threads submit, 4 others cancel recent futures at random while they are queued, batched or done."""
    def slow(x: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.0003)  # the queue builds up, so cancels hit queued, taken and finished requests alike
        return model(x)

    with Batcher(slow, input_spec=SPEC, max_batch=8, max_delay_ms=2, max_queue=10_000) as b:
        futs: list[tuple[np.ndarray, concurrent.futures.Future]] = []
        lock = threading.Lock()
        done = threading.Event()

        def submitter(k: int) -> None:
            for j in range(150):
                x = image(1000 * k + j)
                f = b.submit(x)
                with lock:
                    futs.append((x, f))
            done.set()

        def canceller(k: int) -> None:
            rng = random.Random(k)
            while not done.is_set() or rng.random() < 0.5:
                with lock:
                    pick = rng.choice(futs[-20:])[1] if futs else None
                if pick is not None:
                    pick.cancel()
                time.sleep(0.0001)

        with Sampler(b):
            run_threads(12, lambda k: submitter(k) if k < 8 else canceller(k))
            results = concurrent.futures.wait([f for _, f in futs], timeout=JOIN_S)
        assert not results.not_done
        cancelled = sum(f.cancelled() for _, f in futs)
        wrong = sum(not same(f.result(), direct(x)) for x, f in futs if not f.cancelled())
        s = b.stats()
        assert wrong == 0 and cancelled > 0
        assert (s["requests"], s["served"], s["cancelled"]) == (1200, 1200 - cancelled, cancelled)
        assert s["queued"] == s["in_flight"] == 0
        still_serves(b)


def test_close_while_clients_submit():
    """Requests accepted before close all run (drain); the rest are refused with BatcherClosedError."""
    b = Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=1, max_queue=10**7)
    accepted: list[tuple[np.ndarray, concurrent.futures.Future]] = []
    refused = Counter()
    lock = threading.Lock()
    go = threading.Event()

    def client(k: int) -> None:
        go.wait(JOIN_S)
        for j in range(10**9):  # until the close refuses it
            x = image(100_000 * k + j)
            try:
                f = b.submit(x)
            except BatcherClosedError:
                with lock:
                    refused[k] += 1
                return
            with lock:
                accepted.append((x, f))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.02)
    b.close(drain=True, timeout=JOIN_S)
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads)
    assert all(f.done() for _, f in accepted)
    assert sum(not same(f.result(timeout=0), direct(x)) for x, f in accepted) == 0
    s = b.stats()
    assert sum(refused.values()) == 8 and s["requests"] == s["served"] == len(accepted) > 0 and balanced(s)


# ----------------------------------------------------------------------------------------------- load test
def _load(b: Batcher, threads: int, calls: int, make: Callable[[int, int], np.ndarray],
          expect: Callable[[np.ndarray], dict[str, np.ndarray]], close: Callable[[Any, Any], bool]) -> Counter[str]:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        local: Counter[str] = Counter()
        pending: list[tuple[np.ndarray, concurrent.futures.Future]] = []
        for j in range(calls):
            x = make(k, j)
            if j % 4 == 3:  # a quarter through submit(), collected at the end
                pending.append((x, b.submit(x)))
                continue
            local["right" if close(b.infer(x, timeout=JOIN_S), expect(x)) else "wrong"] += 1
        for x, f in pending:
            try:
                local["right" if close(f.result(timeout=JOIN_S), expect(x)) else "wrong"] += 1
            except concurrent.futures.TimeoutError:
                local["lost"] += 1
        with lock:
            seen.update(local)

    run_threads(threads, client)
    return seen


def test_16_threads_x_1000_requests_each_get_their_own_result():
    with Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=2, max_queue=10_000) as b:
        with Sampler(b):
            seen = _load(b, 16, 1000, lambda k, j: image(10_000 * k + j), direct, same)
        s = b.stats()
        assert seen == {"right": 16_000}  # wrong = lost = 0
        assert s["requests"] == s["served"] == s["images"] == 16_000 and balanced(s)
        assert sum(n * c for n, c in s["batch_sizes"].items()) == 16_000 and max(s["batch_sizes"]) <= 8
        still_serves(b)


def test_16_threads_on_a_toy_onnx_model_equal_direct_inference(tmp_path):
    from deploymtl.runtime import load
    from deploymtl.runtime.toy import toy_onnx

    calls = 1000 if env_flag("DEPLOYMTL_FULL_LOAD") else 100
    session = load(toy_onnx(tmp_path / "toy.onnx", max_batch=8), threads=1)
    images = [session.example(1, seed=i)[0] for i in range(64)]
    expected = [{k: v[0] for k, v in session.infer(x[None]).items()} for x in images]
    index = {id(x): i for i, x in enumerate(images)}

    def close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
        return sorted(got) == sorted(want) and all(np.allclose(got[k], want[k], rtol=1e-4, atol=1e-5) for k in got)

    with Batcher(session, max_batch=8, max_delay_ms=2, max_queue=10_000) as b:
        seen = _load(b, 16, calls, lambda k, j: images[(7 * k + j) % 64], lambda x: expected[index[id(x)]], close)
        s = b.stats()
    session.close()
    assert seen == {"right": 16 * calls} and s["served"] == 16 * calls and balanced(s)


# ------------------------------------------------------------------------------------------------ overload
def test_overload_with_a_tiny_queue_rejects_without_deadlock_and_drain_finishes_everything_accepted():
    def slow(x: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.002)
        return model(x)

    b = Batcher(slow, input_spec=SPEC, max_batch=2, max_delay_ms=1, max_queue=2)
    accepted: list[tuple[np.ndarray, concurrent.futures.Future]] = []
    rejected = Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(50):
            x = image(1000 * k + j)
            try:
                f = b.submit(x)
            except QueueFullError as exc:
                assert "queue is full" in str(exc)
                with lock:
                    rejected[k] += 1
                continue
            with lock:
                accepted.append((x, f))

    run_threads(16, client)
    b.close(drain=True, timeout=JOIN_S)
    assert not b._thread.is_alive()
    assert all(f.done() for _, f in accepted)
    assert sum(not same(f.result(timeout=0), direct(x)) for x, f in accepted) == 0
    s = b.stats()
    assert sum(rejected.values()) > 0 and len(accepted) + sum(rejected.values()) == 16 * 50
    assert (s["requests"], s["served"], s["rejected"]) == (len(accepted), len(accepted), sum(rejected.values()))
    assert balanced(s) and s["queued"] == s["in_flight"] == 0


# ------------------------------------------------------------------------------------------ failing backends
def _nan_breaks_batch(x):
    if np.isnan(x).any():
        raise ValueError("NaN input")
    return model(x)


def _fails_above_one(x):
    if len(x) > 1:
        raise RuntimeError("batching unsupported")
    return model(x)


def _always_fails(x):
    raise RuntimeError("backend down")


BACKENDS = [  # (name, backend, keys of the three requests, [served, failed], model call sizes, error, words)
    ("one request breaks its batch", _nan_breaks_batch, [1, np.nan, 3], [2, 1], [3, 1, 1, 1], ValueError, "NaN"),
    ("only batches of one work", _fails_above_one, [1, 2, 3], [3, 0], [3, 1, 1, 1], None, ""),
    ("every call fails", _always_fails, [1, 2, 3], [0, 3], [3, 1, 1, 1], RuntimeError, "backend down"),
    ("one row short", lambda x: model(x[:-1]), [1, 2, 3], [0, 3], [3, 1, 1, 1], DeploymtlError,
     "returned {'affine': (0, 2, 3, 3), 'total': (0,), 'id': (0,)} for a batch of 1"),
    ("not a dict", lambda x: [x], [1, 2, 3], [0, 3], [3, 1, 1, 1], DeploymtlError, "returned list"),
    ("a scalar output", lambda x: {"y": np.float32(1)}, [1, 2, 3], [0, 3], [3, 1, 1, 1], DeploymtlError,
     "returned {'y': ()}"),
]


@pytest.mark.parametrize("name, backend, keys, outcome, sizes, error, words", BACKENDS, ids=[c[0] for c in BACKENDS])
def test_failing_backends_fail_only_their_requests(name, backend, keys, outcome, sizes, error, words):
    calls: list[int] = []

    def fn(x: np.ndarray) -> Any:
        calls.append(len(x))
        return backend(x)

    b = Batcher(fn, input_spec=SPEC, max_batch=3, max_delay_ms=10, clock=ManualClock(), start=False)
    futs = [b.submit(image(k)) for k in keys]
    assert b.step() == 1 and calls == sizes
    failed = [f for f in futs if f.exception(timeout=0) is not None]
    assert len(failed) == outcome[1]
    for f in failed:
        with pytest.raises(error, match=re.escape(words)):
            f.result(timeout=0)
    for k, f in zip(keys, futs, strict=True):
        if f not in failed:
            assert same(f.result(timeout=0), direct(image(k)))
    s = b.stats()
    assert [s["served"], s["failed"]] == outcome and s["batches"] == len(sizes) and balanced(s)


class Fatal(BaseException):
    """Not an Exception: what a bug in bookkeeping or a misbehaving extension might raise."""


def test_worker_survives_failing_backends_and_keeps_serving():
    flaky = iter([RuntimeError("one"), None, ValueError("two")])

    def fn(x: np.ndarray) -> dict[str, np.ndarray]:
        exc = next(flaky, None)
        if exc is not None:
            raise exc
        return model(x)

    with Batcher(fn, input_spec=SPEC, max_batch=8, max_delay_ms=0) as b:
        with pytest.raises(RuntimeError, match="one"):
            b.submit(image(1)).result(timeout=JOIN_S)
        assert same(b.submit(image(2)).result(timeout=JOIN_S), direct(image(2)))
        with pytest.raises(ValueError, match="two"):
            b.infer(image(3), timeout=JOIN_S)  # the idle fast path: fails in the caller, the model is released
        extra = still_serves(b)
        s = b.stats()
    assert (s["served"], s["failed"]) == (1 + extra, 2) and balanced(s)


def test_a_fatal_error_in_the_backend_stops_the_worker_cleanly(caplog):
    """A BaseException that is not an Exception stops the worker, but nothing accepted is left waiting."""
    go = threading.Event()

    def fn(x: np.ndarray) -> dict[str, np.ndarray]:
        go.wait(JOIN_S)
        raise Fatal("extension crashed")

    b = Batcher(fn, input_spec=SPEC, max_batch=1, max_delay_ms=0)
    with caplog.at_level(logging.ERROR, logger="deploymtl.runtime.batcher"):
        running = b.submit(image(1))
        queued = [b.submit(image(i)) for i in range(2, 5)]
        go.set()
        with pytest.raises(Fatal):
            running.result(timeout=JOIN_S)
        for f in queued:
            with pytest.raises(BatcherClosedError, match="worker stopped"):
                f.result(timeout=JOIN_S)
        b._thread.join(JOIN_S)
    assert "batcher worker stopped" in caplog.text and b.closed
    with pytest.raises(BatcherClosedError, match="worker stopped on Fatal: extension crashed"):
        b.infer(image(9), timeout=1)
    s = b.stats()
    assert (s["requests"], s["failed"], s["queued"], s["in_flight"]) == (4, 4, 0, 0)
    b.close(timeout=JOIN_S)


# ------------------------------------------------------------------------------------------ done-callbacks
def _raise_exception(f):
    raise RuntimeError("callback bug")


def _raise_fatal(f):
    raise Fatal("callback fatal")


CALLBACKS = [  # (name, callback, what reaches a thread that cancels, what is logged)
    ("raises an Exception", _raise_exception, None, "exception calling callback"),  # logged by concurrent.futures
    ("raises a BaseException", _raise_fatal, Fatal, "a done-callback of a batcher request raised"),
]


@pytest.mark.parametrize("name, callback, reaches_canceller, logged", CALLBACKS, ids=[c[0] for c in CALLBACKS])
def test_a_raising_done_callback_does_not_touch_the_worker_or_the_other_requests(name, callback, reaches_canceller,
                                                                                  logged, caplog):
    with caplog.at_level(logging.ERROR), Batcher(model, input_spec=SPEC, max_batch=4, max_delay_ms=60_000) as b:
        futs = [b.submit(image(i)) for i in range(3)]
        futs[1].add_done_callback(callback)  # before the batch is full: it runs on the worker thread
        futs.append(b.submit(image(3)))
        assert [same(f.result(timeout=JOIN_S), direct(image(i))) for i, f in enumerate(futs)] == [True] * 4
        cancelled = b.submit(image(99))
        cancelled.add_done_callback(callback)
        if reaches_canceller is None:
            assert cancelled.cancel()
        else:  # the canceller's own callback raised in the canceller's thread: still cancelled and withdrawn
            with pytest.raises(reaches_canceller):
                cancelled.cancel()
        assert cancelled.cancelled() and b.queued_images == 0
        extra = still_serves(b)
        s = b.stats()
    assert logged in caplog.text
    assert (s["served"], s["cancelled"], s["queued"]) == (4 + extra, 1, 0) and balanced(s)


def test_callbacks_may_call_back_into_the_batcher():
    """Done-callbacks that submit, cancel another queued request, and close the batcher from the worker thread:
    no deadlock (futures run their callbacks outside the batcher's lock; close does not wait for itself)."""
    go = threading.Event()

    def gated(x: np.ndarray) -> dict[str, np.ndarray]:
        go.wait(JOIN_S)
        return model(x)

    b = Batcher(gated, input_spec=SPEC, max_batch=2, max_delay_ms=60_000)
    chained: list[concurrent.futures.Future] = []
    first = b.submit(image(1))
    pair = b.submit(image(3))  # a full batch with `first`: it runs, held by `go`
    victim = b.submit(image(4))  # queued behind it
    victim.add_done_callback(lambda f: b.close(drain=True))  # runs in the thread that cancels: the worker

    def chain(f: concurrent.futures.Future) -> None:
        chained.append(b.submit(image(50)))
        victim.cancel()

    first.add_done_callback(chain)
    go.set()
    assert same(first.result(timeout=JOIN_S), direct(image(1)))
    assert same(pair.result(timeout=JOIN_S), direct(image(3)))
    b._thread.join(JOIN_S)
    assert not b._thread.is_alive() and victim.cancelled() and b.closed
    assert same(chained[0].result(timeout=0), direct(image(50)))  # accepted before close: drained
    s = b.stats()
    assert (s["requests"], s["served"], s["cancelled"], s["queued"], s["in_flight"]) == (4, 3, 1, 0, 0)


# ------------------------------------------------------------------------------------ bookkeeping faults
class FaultyClock:
    """time.monotonic, except that it raises `exc` once, on its first call from the worker thread after `arm()`."""

    def __init__(self, exc: BaseException, armed: bool = True) -> None:
        self.exc, self.raised = exc, 0
        self._armed = threading.Event()
        if armed:
            self._armed.set()

    def arm(self) -> None:
        self._armed.set()

    def __call__(self) -> float:
        if self._armed.is_set() and not self.raised and threading.current_thread().name == "deploymtl-batcher":
            self.raised += 1
            raise self.exc
        return time.monotonic()


def test_a_failing_clock_in_the_worker_is_logged_and_the_worker_goes_on(caplog):
    clock = FaultyClock(RuntimeError("clock glitch"))
    with caplog.at_level(logging.ERROR, logger="deploymtl.runtime.batcher"), \
            Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=1, clock=clock) as b:
        futs = [b.submit(image(i)) for i in range(3)]
        assert [same(f.result(timeout=JOIN_S), direct(image(i))) for i, f in enumerate(futs)] == [True] * 3
        still_serves(b)
    assert clock.raised == 1 and "scheduling failed; retrying" in caplog.text


def test_a_fatal_clock_error_stops_the_worker_and_fails_what_is_queued(caplog):
    clock = FaultyClock(Fatal("clock gone"), armed=False)
    with caplog.at_level(logging.ERROR, logger="deploymtl.runtime.batcher"):
        b = Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=60_000, clock=clock)
        futs = [b.submit(image(i)) for i in range(4)]
        clock.arm()
        with b._cond:  # wake the waiting worker (a submit would race it: it may stop before being accepted)
            b._cond.notify_all()
        for f in futs:
            with pytest.raises(BatcherClosedError, match="not run: the batcher's worker stopped on Fatal"):
                f.result(timeout=JOIN_S)
        b._thread.join(JOIN_S)
    assert "batcher worker stopped" in caplog.text and b.closed
    with pytest.raises(BatcherClosedError, match="closed .*worker stopped on Fatal: clock gone"):
        b.submit(image(1))
    s = b.stats()
    assert (s["requests"], s["failed"], s["queued"]) == (4, 4, 0) and balanced(s)
    b.close(timeout=JOIN_S)


# ------------------------------------------------------------------------------------------------- asyncio
def test_outer_wait_for_cancels_the_request_and_takes_it_out_of_the_queue():
    async def main(b: Batcher) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.infer_async(image(1)), 0.02)
        assert b.queued_images == 0 and b.stats()["cancelled"] == 1  # not left occupying the queue
        outs = await asyncio.gather(*(b.infer_async(image(i), timeout=JOIN_S) for i in range(4)))  # a full batch
        assert [same(o, direct(image(i))) for i, o in enumerate(outs)] == [True] * 4

    with Batcher(model, input_spec=SPEC, max_batch=4, max_delay_ms=60_000) as b:
        asyncio.run(main(b))
        s = b.stats()
    assert (s["requests"], s["served"], s["cancelled"], s["timed_out"]) == (5, 4, 1, 0) and balanced(s)


def test_infer_async_own_timeout_counts_as_timed_out():
    async def main(b: Batcher) -> None:
        # whichever sees it first: the worker (expired in the queue) or the waiting task (wait ran out)
        with pytest.raises(RequestTimeoutError, match=r"(within|after) 0.02 s"):
            await b.infer_async(image(1), timeout=0.02)

    with Batcher(model, input_spec=SPEC, max_batch=4, max_delay_ms=60_000) as b:
        asyncio.run(main(b))
        assert b.queued_images == 0
        extra = still_serves(b)
        s = b.stats()
    assert (s["requests"], s["timed_out"], s["cancelled"], s["served"]) == (1 + extra, 1, 0, extra) and balanced(s)


def test_task_cancelled_while_its_expired_request_is_being_ended():
    """The window, opened on purpose: the worker has claimed the request as timed out but not yet set its future,
    the task's own wait runs out and finds it ended, and then the task is cancelled from outside. The task must
    see its cancellation (not BatcherClosedError), and the request still ends once, as timed out."""
    clock = ManualClock()
    b = Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=1000, clock=clock, start=False)

    async def main() -> list[Any]:
        task = asyncio.ensure_future(b.infer_async(image(1), timeout=0.02))
        await asyncio.sleep(0)  # the task enqueues its request
        clock.advance(0.02)
        with b._cond:
            expired, batch = b._take_locked(clock(), select=False)  # as the worker would, before ending it
        await asyncio.sleep(0.1)  # the task's own 20 ms wait runs out meanwhile
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return expired

    expired = asyncio.run(main())
    assert len(expired) == 1 and not expired[0].future.cancelled()
    Batcher._end_expired(expired)
    with pytest.raises(RequestTimeoutError, match="in the batcher queue"):
        expired[0].future.result(timeout=0)
    s = b.stats()
    assert (s["requests"], s["timed_out"], s["cancelled"], s["queued"]) == (1, 1, 0, 0) and balanced(s)


def test_an_abandoned_request_ending_as_its_loop_stops_logs_nothing(caplog):
    """A task is cut off after the worker claimed its request as timed out; the worker ends it in the loop's last
    turn (asyncio.run stops the loop right after the main task). Its outcome is dropped on purpose, so asyncio must
    not log it later as "exception was never retrieved"."""
    clock = ManualClock()
    b = Batcher(model, input_spec=SPEC, max_batch=8, max_delay_ms=1000, clock=clock, start=False)
    loop = asyncio.new_event_loop()

    async def main() -> list[Any]:
        task = asyncio.ensure_future(b.infer_async(image(1), timeout=0.02))
        await asyncio.sleep(0)  # the task enqueues its request
        clock.advance(0.02)
        with b._cond:
            expired, _ = b._take_locked(clock(), select=False)  # claimed as timed out, its future not yet set
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return expired

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        expired = loop.run_until_complete(main())
        Batcher._end_expired(expired)  # the worker's turn, after the main task ended
        loop.call_soon(loop.stop)  # the loop's last turn runs what was scheduled so far, then it is closed
        loop.run_forever()
        loop.close()
        del expired
        gc.collect()
    assert "never retrieved" not in caplog.text
    s = b.stats()
    assert (s["requests"], s["timed_out"], s["cancelled"]) == (1, 1, 0) and balanced(s)


@pytest.mark.parametrize("inner_timeout", [None, 0.008], ids=["outer cut-off", "outer and own timeout"])
def test_asyncio_cancel_storm(inner_timeout, caplog):
    """300 tasks, each cut off by an outer wait_for after 1-20 ms, against a 10 ms delay."""
    async def main(b: Batcher) -> Counter[str]:
        rng = random.Random(0)
        seen: Counter[str] = Counter()

        async def one(i: int) -> None:
            x = image(i)
            try:
                out = await asyncio.wait_for(b.infer_async(x, timeout=inner_timeout), rng.uniform(0.001, 0.020))
                seen["served" if same(out, direct(x)) else "wrong"] += 1
            except RequestTimeoutError:
                seen["timed_out"] += 1
            except asyncio.TimeoutError:
                seen["cut"] += 1

        await asyncio.gather(*(one(i) for i in range(300)))
        return seen

    def slow(x: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.0005)  # 38 batches take longer than most cut-offs
        return model(x)

    with caplog.at_level(logging.ERROR, logger="asyncio"), \
            Batcher(slow, input_spec=SPEC, max_batch=8, max_delay_ms=10, max_queue=1024) as b:
        seen = asyncio.run(main(b))
        deadline = time.monotonic() + JOIN_S
        while b.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.001)
        s = b.stats()
        assert seen["wrong"] == 0 and seen["served"] + seen["cut"] + seen["timed_out"] == 300 and seen["cut"] > 0
        # A task cut off just as its request ended counts as that end (served, or timed out in the queue): the
        # outcome was delivered, then dropped by the cut. So each end the tasks saw is at most what was counted.
        assert s["served"] + s["cancelled"] + s["timed_out"] == 300
        assert s["served"] >= seen["served"] and s["timed_out"] >= seen["timed_out"] and s["cancelled"] <= seen["cut"]
        assert s["queued"] == s["in_flight"] == 0 and balanced(s)
        still_serves(b)
        gc.collect()  # an abandoned request's asyncio future must not log "exception was never retrieved"
    assert "never retrieved" not in caplog.text
