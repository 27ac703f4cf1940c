"""The dynamic batcher, deterministically: a ManualClock and `start=False` (batches run only in `step()`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import numpy as np
import pytest

from deploymtl.backends.base import InputSpec
from deploymtl.errors import DeploymtlError
from deploymtl.runtime import Batcher, BatcherClosedError, ManualClock, QueueFullError, RequestTimeoutError

SPEC = InputSpec(channels=1, height=2, width=2, max_batch=8)


class Model:
    """Records the batch sizes it ran; fails a whole batch when any image holds NaN."""

    input_spec = SPEC

    def __init__(self) -> None:
        self.batches: list[int] = []

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(x.shape[0])
        if np.isnan(x).any():
            raise ValueError("NaN input")
        return {"double": x * 2, "total": x.sum(axis=(1, 2, 3))}


def img(v: float, n: int | None = None) -> np.ndarray:
    shape = (1, 2, 2) if n is None else (n, 1, 2, 2)
    return np.full(shape, v, dtype=np.float32)


def manual(**kw) -> tuple[Batcher, Model, ManualClock]:
    model, clock = Model(), ManualClock()
    kw = {"max_batch": 4, "max_delay_ms": 10.0} | kw
    return Batcher(model, clock=clock, start=False, **kw), model, clock


def test_groups_up_to_max_batch_and_returns_each_request_its_rows():
    b, model, _ = manual()
    futs = [b.submit(img(i)) for i in range(3)]
    assert b.step() == 0 and model.batches == []  # 3 < max_batch, not due
    futs.append(b.submit(img(3)))
    assert b.step() == 1 and model.batches == [4]
    for i, f in enumerate(futs):
        out = f.result(timeout=0)
        assert out["double"].shape == (1, 2, 2)  # a C x H x W request gets results without the batch axis
        np.testing.assert_array_equal(out["double"], img(2 * i))
        assert out["total"] == pytest.approx(4 * i)
    assert b.stats()["batch_sizes"] == {4: 1}


def test_partial_batch_waits_exactly_max_delay_from_the_oldest_request():
    b, model, clock = manual()
    first = b.submit(img(1))
    clock.advance(0.008)
    second = b.submit(img(2))
    clock.advance(0.0019)
    assert b.step() == 0 and not first.done()
    clock.advance(0.0001)  # 10 ms after the first request, 2 ms after the second
    assert b.step() == 1 and model.batches == [2]
    assert first.result(timeout=0)["total"] == pytest.approx(4) and second.done()


def test_multi_image_requests_keep_their_axis_and_are_not_split():
    b, model, clock = manual()
    a = b.submit(img(1, n=3))
    c = b.submit(img(2, n=2))
    assert b.step() == 1 and model.batches == [3]  # 3 + 2 > 4: the first goes alone, now
    assert a.result(timeout=0)["double"].shape == (3, 1, 2, 2)
    clock.advance(0.010)
    assert b.step() == 1 and model.batches == [3, 2]
    np.testing.assert_array_equal(c.result(timeout=0)["total"], [8.0, 8.0])


def test_preferred_batch_size_sends_early():
    b, model, clock = manual(max_batch=8, preferred_batch_sizes=(4,))
    for i in range(6):
        b.submit(img(i))
    assert b.step() == 1 and model.batches == [4]  # cut at the preferred size, remainder waits
    assert b.queued_images == 2
    clock.advance(0.010)
    assert b.step() == 1 and model.batches == [4, 2]


def test_full_queue_rejects_then_recovers():
    b, model, clock = manual(max_queue=4, max_delay_ms=10.0)
    futs = [b.submit(img(i)) for i in range(3)]
    futs.append(b.submit(img(3)))
    with pytest.raises(QueueFullError, match=r"queue is full \(4 of 4 images waiting\)"):
        b.submit(img(9))
    assert b.stats()["rejected"] == 1
    assert b.step() == 1  # the full batch drains the queue
    assert b.submit(img(5)) is not None
    assert [f.result(timeout=0)["total"] for f in futs] == pytest.approx([0, 4, 8, 12])


def test_bad_requests_fail_alone_at_submit():
    b, model, clock = manual()
    good = b.submit(img(1))
    with pytest.raises(DeploymtlError, match=r"one image of shape \(1, 3, 2\)") as err:
        b.submit(np.zeros((1, 3, 2), np.float32))
    assert err.value.one_line().endswith("(expected N x 1 x 2 x 2)")
    with pytest.raises(DeploymtlError, match="dtype is float64"):
        b.submit(np.zeros((1, 2, 2), np.float64))
    with pytest.raises(DeploymtlError, match="batch 9 is outside the artifact's range 1..8"):
        b.submit(np.zeros((9, 1, 2, 2), np.float32))
    with pytest.raises(DeploymtlError, match="request of 5 images exceeds max_batch 4"):
        b.submit(np.zeros((5, 1, 2, 2), np.float32))
    with pytest.raises(DeploymtlError, match="numpy array"):
        b.submit([[0.0]])
    clock.advance(0.010)
    assert b.step() == 1 and good.result(timeout=0)["total"] == pytest.approx(4)
    assert b.stats()["requests"] == 1


def test_a_request_that_breaks_its_batch_gets_the_exception_and_the_others_their_results():
    b, model, _ = manual(max_batch=3)
    futs = [b.submit(img(1)), b.submit(img(np.nan)), b.submit(img(3))]
    assert b.step() == 1
    assert model.batches == [3, 1, 1, 1]  # the batch failed, each request was re-run alone
    assert futs[0].result(timeout=0)["total"] == pytest.approx(4)
    with pytest.raises(ValueError, match="NaN input"):
        futs[1].result(timeout=0)
    assert futs[2].result(timeout=0)["total"] == pytest.approx(12)
    assert b.stats()["failed"] == 1


def test_timed_out_request_is_never_computed():
    b, model, clock = manual(max_delay_ms=10.0)
    late = b.submit(img(1), timeout=0.003)
    patient = b.submit(img(2))
    clock.advance(0.003)
    assert b.step() == 0
    with pytest.raises(RequestTimeoutError, match="timed out after 0.003 s in the batcher queue"):
        late.result(timeout=0)
    clock.advance(0.007)
    assert b.step() == 1 and model.batches == [1]
    assert patient.result(timeout=0)["total"] == pytest.approx(8)
    assert b.stats()["timed_out"] == 1


def test_default_timeout_and_infer_timeout_on_a_stalled_batcher():
    b, model, clock = manual(timeout_s=0.05)
    with pytest.raises(RequestTimeoutError, match="within 0.05 s"):
        b.infer(img(1))  # nothing steps the batcher: the caller stops waiting after 50 ms
    assert b.step() == 0 and model.batches == []  # the abandoned request was withdrawn, not computed
    assert b.queued_images == 0 and b.stats()["timed_out"] == 1 and b.stats()["cancelled"] == 0


def test_cancelled_future_is_skipped():
    b, model, clock = manual()
    f = b.submit(img(1))
    keep = b.submit(img(2))
    assert f.cancel()
    clock.advance(0.010)
    assert b.step() == 1 and model.batches == [1]
    assert keep.result(timeout=0)["total"] == pytest.approx(8)


def test_close_drain_runs_everything_queued_at_once():
    b, model, _ = manual(max_delay_ms=1000.0)
    futs = [b.submit(img(i)) for i in range(3)]
    b.close(drain=True)
    assert model.batches == [3] and all(f.done() for f in futs)
    with pytest.raises(BatcherClosedError, match="closed"):
        b.submit(img(1))


def test_close_cancel_computes_nothing():
    b, model, _ = manual()
    futs = [b.submit(img(i)) for i in range(3)]
    b.close(drain=False)
    assert model.batches == [] and all(f.cancelled() for f in futs)
    assert b.stats()["cancelled"] == 3
    with pytest.raises(BatcherClosedError):
        b.infer(img(1))


def test_invalid_settings():
    with pytest.raises(DeploymtlError, match="max_batch 16 exceeds the artifact's maximum batch 8"):
        Batcher(Model(), max_batch=16, start=False)
    with pytest.raises(DeploymtlError, match="max_queue 2 is smaller than max_batch 4"):
        Batcher(Model(), max_batch=4, max_queue=2, start=False)
    with pytest.raises(DeploymtlError, match="not callable"):
        Batcher(object(), start=False)
    b = Batcher(Model(), start=True)
    with pytest.raises(DeploymtlError, match="start=False"):
        b.step()
    b.close()


# ---------------------------------------------------------------------------------------- with a worker thread
def test_worker_sends_a_full_batch_without_waiting_for_the_delay():
    model = Model()
    with Batcher(model, max_batch=4, max_delay_ms=60_000) as b:  # a minute: only "full" can trigger a batch
        futs = [b.submit(img(i)) for i in range(4)]
        totals = [f.result(timeout=30)["total"] for f in futs]
    assert totals == pytest.approx([0, 4, 8, 12]) and model.batches == [4]


def test_worker_close_drains_a_partial_batch():
    model = Model()
    b = Batcher(model, max_batch=8, max_delay_ms=60_000)
    futs = [b.submit(img(i)) for i in range(3)]
    b.close(drain=True)
    assert model.batches == [3] and [f.result(timeout=0)["total"] for f in futs] == pytest.approx([0, 4, 8])


def test_many_threads_get_their_own_results():
    model = Model()
    results: dict[int, float] = {}
    with Batcher(model, max_batch=8, max_delay_ms=2.0) as b:
        def client(k: int) -> None:
            for j in range(5):
                v = float(10 * k + j)
                results[10 * k + j] = b.infer(img(v), timeout=30)["total"] / 4

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {k: pytest.approx(k) for k in results} and len(results) == 40
    assert sum(model.batches) == 40 and max(model.batches) <= 8


def test_asyncio_clients():
    model = Model()

    async def main() -> list[float]:
        with Batcher(model, max_batch=4, max_delay_ms=2.0) as b:
            outs = await asyncio.gather(*(b.infer_async(img(i), timeout=30) for i in range(6)))
        return [float(o["total"]) for o in outs]

    assert asyncio.run(main()) == pytest.approx([0, 4, 8, 12, 16, 20])
    assert sum(model.batches) == 6


def test_asyncio_timeout_on_a_stalled_batcher():
    b, model, _ = manual()

    async def main() -> None:
        await b.infer_async(img(1), timeout=0.05)

    with pytest.raises(RequestTimeoutError, match="within 0.05 s"):
        asyncio.run(main())
    assert b.step() == 0 and model.batches == []


def test_submit_returns_a_concurrent_future():
    b, _, clock = manual()
    f = b.submit(img(1))
    assert isinstance(f, concurrent.futures.Future)
    clock.advance(0.010)
    b.step()
    assert concurrent.futures.wait([f], timeout=0).done == {f}


def test_idle_fast_path_runs_in_the_caller_and_never_overlaps_the_worker():
    """max_delay 0: an idle `infer` runs inline; under concurrency the model still runs one batch at a time."""
    lock = threading.Lock()
    active, peak, callers = [0], [0], set()

    def fn(x: np.ndarray) -> dict[str, np.ndarray]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        callers.add(threading.current_thread().name)
        total = x.sum(axis=(1, 2, 3))
        with lock:
            active[0] -= 1
        return {"total": total}

    with Batcher(fn, input_spec=SPEC, max_batch=4, max_delay_ms=0.0) as b:
        assert b.infer(img(2))["total"] == pytest.approx(8)
        assert callers == {threading.current_thread().name}  # idle: no hand-off to the worker
        assert b.stats()["batch_sizes"] == {1: 1} and b.stats()["requests"] == 1

        got: list[tuple[int, float]] = []

        def client(k: int) -> None:
            for _ in range(20):
                got.append((k, float(b.infer(img(k), timeout=30)["total"])))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = b.stats()
    assert len(got) == 120 and all(total == pytest.approx(4 * k) for k, total in got)
    assert peak[0] == 1  # never two batches at once, whichever thread ran them
    assert stats["requests"] == stats["images"] == 121
    assert sum(k * v for k, v in stats["batch_sizes"].items()) == 121
