"""A dynamic batcher for inference services: single-image requests grouped into batches for one session.

    with Batcher(load("model.onnx"), max_batch=8, max_delay_ms=5) as b:
        out = b.infer(image)                      # from any thread: {task: array}
        fut = b.submit(image); fut.result()       # concurrent.futures.Future
        out = await b.infer_async(image)          # from asyncio

Requests are `C x H x W` (one image; results come back without a batch axis) or `n x C x H x W` with
n <= max_batch (results keep the axis). When a batch is sent and how big is `BatchPolicy` (policy.py, shared
with the edge simulator): full at the largest preferred size or `max_batch`, otherwise after the oldest
request waited `max_delay_ms`. One worker thread runs the batches, since one model instance runs one
batch at a time.

- **Every accepted request ends exactly once**: served (a result), failed (an exception), cancelled or
  timed out; `stats()` counts each outcome, and `requests == served + failed + cancelled + timed_out + queued
  + in_flight` holds at every moment. Whoever ends a request (the worker, `cancel()`, a caller that stops
  waiting, `close`) first claims it under the lock; only the claimant counts it and sets its future.
- **Backpressure**: at most `max_queue` images wait; `submit` beyond that raises `QueueFullError` at once
  (a service answers 503 instead of letting latency grow without bound).
- **Bad requests** (shape, dtype, too many images) raise `DeploymtlError` from `submit`; they never reach a
  batch. If a batch of several requests fails in the backend, each request is re-run alone so only the
  request that breaks it gets the exception. A backend answer without one row per image fails the batch too.
- **Cancel and timeouts**: `future.cancel()` on a queued request takes it out of the queue at once (its images
  no longer count against `max_queue`); a running one cannot be cancelled. A request still queued at its
  deadline (`timeout` seconds after submit) fails with `RequestTimeoutError` and is never computed.
  `infer(x, timeout)` / `infer_async` also stop waiting for a running request after `timeout`: it counts as
  timed out and its result is dropped; `infer_async` cancelled from outside (`asyncio.wait_for`, task cancel)
  cancels its request the same way.
- **The worker survives**: an exception from the backend belongs to its requests, one from a done-callback is
  logged (concurrent.futures logs plain exceptions itself), one from the batcher's own bookkeeping (say, an
  injected clock) is logged and the loop goes on. Only a `BaseException` that is not an `Exception` escaping
  the bookkeeping stops the worker; then the batcher closes and every queued request fails with
  `BatcherClosedError`, so nothing waits forever.
- **Shutdown**: `close(drain=True)` (also on leaving `with`) stops accepting requests, sends everything queued
  without waiting for the delay, and returns when it has run; `close(drain=False)` cancels the queued requests
  (their futures report `cancelled()`; `infer` raises `BatcherClosedError`) and lets the running batch finish.
- **Idle fast path**: `infer` on an idle batcher (nothing queued or running) whose policy would send the request
  at once anyway (`max_delay_ms=0`, or the request fills a batch) runs it in the calling thread, saving the two
  thread hand-offs; the model still runs one batch at a time, whoever runs it.
- **Determinism for tests**: pass `clock=ManualClock()` and `start=False`; nothing runs until `step()`,
  which sends every batch that is ready at the clock's time, in the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backends.base import InputSpec
from ..errors import DeploymtlError
from .policy import BatchPolicy
from .request import (
    OUTCOMES,
    BatcherClosedError,
    Outputs,
    QueueFullError,
    Request,
    RequestFuture,
    RequestTimeoutError,
    abandoned_error,
    cancel_owned,
    complete,
    drop,
    log,
    loop_mirror,
    split_outputs,
)

__all__ = ["Batcher", "BatcherClosedError", "ManualClock", "QueueFullError", "RequestTimeoutError"]

_RETRY_S = 0.01  # the worker's pause after its own bookkeeping failed, so a persistent fault cannot spin a core


class ManualClock:
    """A clock that only moves when told to: `clock()` -> seconds, `clock.advance(dt)`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> float:
        self.now += dt
        return self.now


class Batcher:
    """Groups requests into batches for `model` (a Session, a Runner, or any `fn(batch) -> {task: array}`).

    max_batch: images per batch (<= the artifact's maximum). max_delay_ms: longest wait of the oldest queued
    request before a partial batch is sent. preferred_batch_sizes: sizes to send at as soon as reached.
    max_queue: images allowed to wait (default 8 x max_batch). timeout_s: default per-request timeout.
    clock: seconds, monotonic (injectable). start: run the worker thread now (False: drive with `step()`).
    """

    def __init__(self, model: Any, *, max_batch: int = 8, max_delay_ms: float = 5.0,
                 preferred_batch_sizes: tuple[int, ...] | list[int] = (), max_queue: int | None = None,
                 timeout_s: float | None = None, input_spec: InputSpec | None = None,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        """Arguments as in the class docstring. Nine parameters on purpose: all but `model` are keyword-only
        settings with defaults (most callers name two or three) whose names are those of the edge scenario and
        `deploymtl profile` (max_batch, max_delay_ms, max_queue); a separate settings object would make every
        caller build one for the same fields."""
        self._fn: Callable[[np.ndarray], Outputs] = getattr(model, "infer", model)
        if not callable(self._fn):
            raise DeploymtlError(f"batcher model {type(model).__name__} is not callable",
                                 hint="expected a Session, a Runner or fn(batch) -> {task: array}")
        self.input_spec = input_spec or getattr(model, "input_spec", None)
        self.policy = BatchPolicy(max_batch=max_batch, max_delay_s=float(max_delay_ms) / 1000.0,
                                  preferred=tuple(preferred_batch_sizes))
        limit = self.input_spec.max_batch if self.input_spec is not None else None
        if limit is not None and max_batch > limit:
            raise DeploymtlError(f"batcher max_batch {max_batch} exceeds the artifact's maximum batch {limit}",
                                 hint=f"use max_batch <= {limit} or re-export with a larger --batch MAX")
        self.max_queue = 8 * max_batch if max_queue is None else int(max_queue)
        if self.max_queue < max_batch:
            raise DeploymtlError(f"batcher max_queue {self.max_queue} is smaller than max_batch {max_batch}",
                                 hint="expected max_queue >= max_batch")
        if timeout_s is not None and not timeout_s > 0:
            raise DeploymtlError(f"batcher timeout is {timeout_s!r} s", hint="expected > 0 or None")
        self.timeout_s = timeout_s
        self._clock = clock
        self._cond = threading.Condition()  # an RLock inside: a cancel() from a callback may re-enter
        self._queue: deque[Request] = deque()
        self._queued_images = 0
        self._in_flight = 0  # requests a batch took and that have not ended
        self._inline = False  # an idle-fast-path request is running in its caller's thread
        # the fast path counts one number per request; stats() derives requests/served/batches/images from it
        self._inline_sizes: Counter[int] = Counter()
        self._inline_failed = 0
        self._closed = False
        self._draining = False
        self._busy = False  # a batch is running (worker or inline)
        self._stopped: str | None = None  # why the worker stopped, if it did not stop on close
        self._stats: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # ----------------------------------------------------------------------------------------- requests
    def submit(self, x: np.ndarray, timeout: float | None = None) -> concurrent.futures.Future:
        """Queue one image (C x H x W) or a few (n x C x H x W); the future yields {task: array}."""
        req_x, squeeze = self._validate(x)
        return self._enqueue(req_x, squeeze, self._timeout(timeout)).future

    def _timeout(self, timeout: float | None) -> float | None:
        timeout = self.timeout_s if timeout is None else timeout
        if timeout is not None and not timeout > 0:
            raise DeploymtlError(f"request timeout is {timeout!r} s", hint="expected > 0 or None")
        return timeout

    def _enqueue(self, req_x: np.ndarray, squeeze: bool, timeout: float | None) -> Request:
        req_x = np.array(req_x, copy=True, order="C")  # queued: the caller may reuse its buffer meanwhile
        fut = RequestFuture(self._withdraw)
        with self._cond:
            if self._closed:
                why = f" ({self._stopped})" if self._stopped else ""
                raise BatcherClosedError(f"the batcher is closed and accepts no more requests{why}")
            if self._queued_images + req_x.shape[0] > self.max_queue:
                self._stats["rejected"] += 1
                raise QueueFullError(f"batcher queue is full ({self._queued_images} of {self.max_queue} images "
                                     "waiting)", hint="retry later or raise max_queue")
            now = self._clock()
            req = Request(req_x, squeeze, now, None if timeout is None else now + timeout, fut)
            fut._request = req
            self._queue.append(req)
            self._queued_images += req.n
            self._stats["requests"] += 1
            self._cond.notify()
        return req

    def infer(self, x: np.ndarray, timeout: float | None = None) -> Outputs:
        """Submit and wait: {task: array}. Raises RequestTimeoutError after `timeout` seconds.

        Idle fast path: when nothing is queued or running and the policy would send this request at once
        anyway (max_delay 0, or the request fills a batch), it runs in the calling thread: the same batch the
        worker would run, without two thread hand-offs.
        """
        req_x, squeeze = self._validate(x)
        timeout = self._timeout(timeout)
        if self._claim_idle(req_x.shape[0]):
            return self._run_claimed(req_x, squeeze)
        req = self._enqueue(req_x, squeeze, timeout)
        try:
            return self._outcome(req.future, timeout)
        except (concurrent.futures.TimeoutError, TimeoutError):  # the wait ran out, or the request's own timeout
            if self._abandon(req, "timed_out"):
                raise RequestTimeoutError(f"request did not complete within {timeout} s",
                                          hint="raise the timeout or lower the load") from None
        return self._outcome(req.future, None)  # it ended just before the wait ran out: its own outcome

    @staticmethod
    def _outcome(fut: concurrent.futures.Future, timeout: float | None) -> Outputs:
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.CancelledError:
            raise BatcherClosedError("the request was cancelled: the batcher was closed before it ran") from None

    async def infer_async(self, x: np.ndarray, timeout: float | None = None) -> Outputs:
        """`infer` for asyncio: awaits the batch without blocking the event loop.

        A task cancelled while it waits (an outer `asyncio.wait_for`, `task.cancel()`) cancels its request:
        taken out of the queue at once, or its result dropped if it is already running.
        """
        req_x, squeeze = self._validate(x)
        timeout = self._timeout(timeout)
        req = self._enqueue(req_x, squeeze, timeout)
        waiter = loop_mirror(req.future)
        try:  # shielded: the mirror stays live for the outcome of a request that ended as the wait ran out
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except (asyncio.TimeoutError, TimeoutError):  # the wait ran out, or the request's own timeout
                if self._abandon(req, "timed_out"):
                    drop(waiter)
                    raise RequestTimeoutError(f"request did not complete within {timeout} s",
                                              hint="raise the timeout or lower the load") from None
            return await asyncio.shield(waiter)  # it had ended as the wait ran out: its own outcome, at once
        except asyncio.CancelledError:
            if waiter.cancelled():  # the batcher cancelled it: closed without drain before it ran
                raise BatcherClosedError("the request was cancelled: the batcher was closed before it ran") from None
            self._abandon(req, "cancelled")  # False: it ended meanwhile; either way this task drops the outcome
            drop(waiter)
            raise

    def _claim_idle(self, n: int) -> bool:
        """Reserve the model for a request the caller runs itself (see `infer`); only with a worker thread."""
        if self._thread is None:
            return False
        with self._cond:
            if self._closed or self._busy or self._queue:
                return False
            if not (self.policy.max_delay_s == 0 or n >= self.policy.target):
                return False
            self._busy = self._inline = True
            return True

    def _run_claimed(self, x: np.ndarray, squeeze: bool) -> Outputs:
        failed = True
        try:
            out = split_outputs(self._fn(x), [(x.shape[0], squeeze)])[0]
            failed = False
        finally:
            with self._cond:
                self._busy = self._inline = False
                self._inline_sizes[x.shape[0]] += 1
                self._inline_failed += failed
                if self._queue or self._closed:  # waking an idle worker for nothing would cost a switch
                    self._cond.notify_all()
        return out

    def _validate(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """(n x C x H x W view of x, whether x was one C x H x W image); one-line errors for bad requests."""
        squeeze = isinstance(x, np.ndarray) and x.ndim == 3
        batch = x[None] if squeeze else x
        if self.input_spec is not None:
            try:
                self.input_spec.check(batch, "batcher request")
            except DeploymtlError as exc:
                if not squeeze:
                    raise
                msg = str(exc).replace("batcher request", f"batcher request (one image of shape {x.shape})", 1)
                raise DeploymtlError(msg, hint=exc.hint) from None
        elif not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise DeploymtlError(f"batcher request: input has shape {getattr(x, 'shape', type(x).__name__)}",
                                 hint="expected C x H x W or N x C x H x W numpy array")
        if batch.shape[0] > self.policy.max_batch:
            raise DeploymtlError(f"batcher request of {batch.shape[0]} images exceeds max_batch "
                                 f"{self.policy.max_batch}", hint="split the request")
        return batch, squeeze

    # ------------------------------------------------------------------------------ ending a request
    def _claim_locked(self, r: Request, outcome: str) -> bool:
        """Claim r's end as `outcome` (lock held); False if someone else ended it first. Only the claimant
        counts it and sets its future."""
        if r.outcome is not None:
            return False
        r.outcome = outcome
        self._stats[outcome] += 1
        if r.taken:
            self._in_flight -= 1
        r.future._request = None
        return True

    def _unqueue_locked(self, r: Request) -> bool:
        """Take r out of the queue (lock held); False if it is not there (a batch took it, or it ended)."""
        if not r.queued:
            return False
        self._queue.remove(r)  # identity comparison (Request has eq=False); the queue is short
        self._queued_images -= r.n
        r.queued = False
        return True

    def _end_queued_locked(self, outcome: str) -> list[Request]:
        """Empty the queue (lock held), claiming every queued request as `outcome`; the caller completes their
        futures once the lock is released."""
        ended = list(self._queue)
        for r in ended:
            self._unqueue_locked(r)
            self._claim_locked(r, outcome)
        return ended

    def _withdraw(self, r: Request) -> None:
        """r's future was cancelled: if still queued, it leaves the queue now (a batch that took it ends it)."""
        with self._cond:
            if not self._unqueue_locked(r):
                return
            self._claim_locked(r, "cancelled")
        try:
            r.future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait() callers
        except BaseException:  # noqa: BLE001
            log.exception("notifying a cancelled batcher request failed")

    def _abandon(self, r: Request, outcome: str) -> bool:
        """The caller stops waiting for r. True: r ends as `outcome` (a queued r now, a running one's result is
        dropped); False: r had already ended and its future holds (or is about to hold) the outcome."""
        with self._cond:
            if not self._claim_locked(r, outcome):
                return False
            owned = self._unqueue_locked(r)
        if owned:  # no batch will see it: this thread ends its future
            if outcome == "cancelled":
                cancel_owned(r.future)
            else:
                complete(r.future, abandoned_error(r.outcome), failed=True)
        return True

    # ------------------------------------------------------------------------------------ scheduling
    def _take_locked(self, now: float, select: bool) -> tuple[list[Request], list[Request]]:
        """(requests expired at `now`, the next batch or []), both out of the queue; call with the lock held.

        Everything that can raise runs before the queue changes, so a failure leaves it as it was.
        """
        expired = [r for r in self._queue if r.deadline is not None and now >= r.deadline]
        keep = [r for r in self._queue if r.deadline is None or now < r.deadline] if expired else self._queue
        k = 0
        if select and keep:
            k = self.policy.select([r.n for r in keep], keep[0].arrival, now, flush=self._draining)
        if expired:
            self._queue = deque(keep)
            for r in expired:
                r.queued = False
                self._queued_images -= r.n
                self._claim_locked(r, "timed_out")
        batch = [self._queue.popleft() for _ in range(k)]
        for r in batch:
            r.queued, r.taken = False, True
            self._queued_images -= r.n
        self._in_flight += len(batch)
        return expired, batch

    def next_event(self) -> float | None:
        """Clock time at which the oldest request falls due or a queued request expires (None: queue empty)."""
        with self._cond:
            if not self._queue:
                return None
            times = [self.policy.due(self._queue[0].arrival)]
            times += [r.deadline for r in self._queue if r.deadline is not None]
            return min(times)

    def _wait_s(self, now: float) -> float | None:
        """How long the worker may sleep (lock held). While busy only deadlines wake it: the running batch
        notifies when it ends."""
        times = [r.deadline for r in self._queue if r.deadline is not None]
        if self._queue and not self._busy:
            times.append(self.policy.due(self._queue[0].arrival))
        return max(0.0, min(times) - now) if times else None

    @staticmethod
    def _end_expired(expired: list[Request]) -> None:
        for r in expired:  # claimed as timed out by _take_locked; a racing cancel() ends it as cancelled
            if r.future.set_running_or_notify_cancel():
                complete(r.future, RequestTimeoutError(
                    f"request timed out after {r.deadline - r.arrival:.3g} s in the batcher queue",
                    hint="raise the timeout or lower the load"), failed=True)

    def _count_batch(self, n: int) -> None:  # lock held
        self._stats["batches"] += 1
        self._stats["images"] += n
        self._batch_sizes[n] += 1

    # ----------------------------------------------------------------------------------------- running
    def _worker(self) -> None:
        try:
            while self._serve_once():
                pass
        except BaseException as exc:  # noqa: BLE001 - not an Exception (those never leave _serve_once)
            log.exception("batcher worker stopped")
            self._worker_stopped(exc)

    def _serve_once(self) -> bool:
        """One turn of the worker: wait for work, end expired requests, run a batch. False: closed, drained."""
        try:
            work = self._next_work()
        except Exception:  # noqa: BLE001 - e.g. an injected clock failed: the queue is unchanged, try again
            log.exception("batcher worker: scheduling failed; retrying in %.0f ms", _RETRY_S * 1e3)
            time.sleep(_RETRY_S)
            return True
        if work is None:
            return False
        expired, batch = work
        try:
            self._end_expired(expired)
            if batch:
                self._run_batch(batch)
        except Exception:  # noqa: BLE001 - _run_batch ended its requests before re-raising
            log.exception("batcher worker: a batch failed outside the model")
        finally:
            if batch:
                with self._cond:
                    self._busy = False
                    if self._closed:
                        self._cond.notify_all()
        return True

    def _next_work(self) -> tuple[list[Request], list[Request]] | None:
        """Block until requests expired or a batch is due: (expired, batch); None once closed and drained."""
        with self._cond:
            while True:
                now = self._clock()
                expired, batch = self._take_locked(now, select=not self._busy)
                if batch:
                    self._busy = True
                if expired or batch:
                    return expired, batch
                if self._closed and not self._queue:
                    return None
                self._cond.wait(self._wait_s(now))

    def _run_batch(self, batch: list[Request]) -> None:
        """Run one batch taken from the queue. Every request of it ends here, whatever raises."""
        try:
            live = self._start(batch)
            if live:
                self._finish(live, self._compute(live))
        except BaseException as exc:
            for r in batch:
                if not r.future.done():
                    with self._cond:
                        self._claim_locked(r, "failed")
                    complete(r.future, exc, failed=True)
            raise

    def _start(self, batch: list[Request]) -> list[Request]:
        """Mark the batch running; returns the requests to compute. Cancelled ones end as cancelled, those
        whose caller stopped waiting meanwhile end with the caller's outcome."""
        started = [r.future.set_running_or_notify_cancel() for r in batch]
        live, dropped = [], []
        with self._cond:
            for r, running in zip(batch, started, strict=True):
                if not running:
                    self._claim_locked(r, "cancelled")
                elif r.outcome is None:
                    live.append(r)
                else:
                    dropped.append(r)
            if live:
                self._count_batch(sum(r.n for r in live))
        for r in dropped:
            complete(r.future, abandoned_error(r.outcome), failed=True)
        return live

    def _compute(self, live: list[Request]) -> list[tuple[Any, bool]]:
        """(outputs or exception, failed) per request; a failing batch is re-run request by request."""
        x = live[0].x if len(live) == 1 else np.concatenate([r.x for r in live])
        try:
            return [(out, False) for out in split_outputs(self._fn(x), [(r.n, r.squeeze) for r in live])]
        except Exception as exc:  # noqa: BLE001 - a backend failure belongs to the requests, not the worker
            if len(live) == 1:
                return [(exc, True)]
        results: list[tuple[Any, bool]] = []
        for r in live:  # isolate the request that breaks the batch; the others still get results
            with self._cond:
                self._count_batch(r.n)
            try:
                results.append((split_outputs(self._fn(r.x), [(r.n, r.squeeze)])[0], False))
            except Exception as one:  # noqa: BLE001
                results.append((one, True))
        return results

    def _finish(self, live: list[Request], results: list[tuple[Any, bool]]) -> None:
        with self._cond:
            mine = [self._claim_locked(r, "failed" if failed else "served")
                    for r, (_, failed) in zip(live, results, strict=True)]
        for r, (value, failed), claimed in zip(live, results, mine, strict=True):
            if claimed:
                complete(r.future, value, failed)
            else:  # its caller stopped waiting while it ran: the result is dropped
                complete(r.future, abandoned_error(r.outcome), failed=True)

    def _worker_stopped(self, exc: BaseException) -> None:
        """The worker stopped before close: the batcher closes, and nothing queued may wait forever."""
        with self._cond:
            self._closed = True
            self._stopped = f"the batcher's worker stopped on {type(exc).__name__}: {exc}"
            orphans = self._end_queued_locked("failed")
            self._cond.notify_all()
        for r in orphans:
            complete(r.future, BatcherClosedError(f"the request was not run: {self._stopped}"), failed=True)

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="deploymtl-batcher", daemon=True)
                self._thread.start()

    def step(self) -> int:
        """Manual mode (`start=False`): run every batch that is ready at the clock's time; returns how many."""
        if self._thread is not None:
            raise DeploymtlError("Batcher.step() drives a batcher created with start=False",
                                 hint="this batcher has a worker thread")
        ran = 0
        while True:
            with self._cond:
                expired, batch = self._take_locked(self._clock(), select=True)
            self._end_expired(expired)
            if not batch:
                return ran
            self._run_batch(batch)
            ran += 1

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; run (drain) or cancel what is queued; wait for the worker and for an
        inline `infer` still running (at most `timeout` seconds in all)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            dropped: list[Request] = []
            if drain:
                self._draining = True
            else:
                dropped = self._end_queued_locked("cancelled")
            self._cond.notify_all()
        for r in dropped:
            cancel_owned(r.future)
        if self._thread is None:
            self.step()
            return
        if self._thread is threading.current_thread():  # close() from a done-callback: cannot wait for itself
            return
        self._thread.join(timeout)
        with self._cond:
            while self._busy:  # an inline `infer` holds the model; it notifies when it ends
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=True)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_images(self) -> int:
        with self._cond:
            return self._queued_images

    def stats(self) -> dict[str, Any]:
        """Counters, one consistent snapshot.

        requests: accepted; served / failed / cancelled / timed_out: ended so (`requests` = their sum +
        `queued` + `in_flight`); rejected: refused with QueueFullError; batches / images / batch_sizes {n: count}:
        what the model was called with (a failing batch re-run request by request counts each call).
        """
        with self._cond:
            keys = ("requests", *OUTCOMES, "rejected", "batches", "images")
            out = {k: self._stats[k] for k in keys}
            inline = sum(self._inline_sizes.values())
            out["requests"] += inline + self._inline
            out["served"] += inline - self._inline_failed
            out["failed"] += self._inline_failed
            out["batches"] += inline
            out["images"] += sum(n * c for n, c in self._inline_sizes.items())
            sizes = self._batch_sizes + self._inline_sizes
            return out | {"queued": len(self._queue), "in_flight": self._in_flight + self._inline,
                          "batch_sizes": dict(sorted(sizes.items()))}
