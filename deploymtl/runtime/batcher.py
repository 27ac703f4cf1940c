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

- **Backpressure**: at most `max_queue` images wait; `submit` beyond that raises `QueueFullError` at once
  (a service answers 503 instead of letting latency grow without bound).
- **Bad requests** (shape, dtype, too many images) raise `DeploymtlError` from `submit`; they never reach a
  batch. If a batch of several requests fails in the backend, each request is re-run alone so only the
  request that breaks it gets the exception; the batcher keeps serving.
- **Timeouts**: a request still queued at its deadline (`timeout` seconds after submit) fails with
  `RequestTimeoutError` and is never computed; `infer(x, timeout)` also stops waiting for a request that is
  already running after `timeout`.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.base import InputSpec
from ..errors import DeploymtlError
from .policy import BatchPolicy

Outputs = dict[str, np.ndarray]


class QueueFullError(DeploymtlError):
    """The batcher's queue holds `max_queue` images; retry later (HTTP 503)."""


class RequestTimeoutError(DeploymtlError, TimeoutError):
    """The request did not complete within its timeout."""


class BatcherClosedError(DeploymtlError):
    """The batcher was closed before the request ran."""


class ManualClock:
    """A clock that only moves when told to: `clock()` -> seconds, `clock.advance(dt)`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> float:
        self.now += dt
        return self.now


@dataclass
class _Request:
    x: np.ndarray  # n x C x H x W, owned by the batcher
    squeeze: bool  # the caller sent one C x H x W image
    arrival: float
    deadline: float | None
    future: concurrent.futures.Future

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


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
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._closed = False
        self._draining = False
        self._busy = False  # a batch is running (worker or inline)
        self._stats: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._inline_sizes: Counter[int] = Counter()  # batches run by `infer`'s idle fast path
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # ----------------------------------------------------------------------------------------- requests
    def submit(self, x: np.ndarray, timeout: float | None = None) -> concurrent.futures.Future:
        """Queue one image (C x H x W) or a few (n x C x H x W); the future yields {task: array}."""
        req_x, squeeze = self._validate(x)
        return self._enqueue(req_x, squeeze, self._timeout(timeout))

    def _timeout(self, timeout: float | None) -> float | None:
        timeout = self.timeout_s if timeout is None else timeout
        if timeout is not None and not timeout > 0:
            raise DeploymtlError(f"request timeout is {timeout!r} s", hint="expected > 0 or None")
        return timeout

    def _enqueue(self, req_x: np.ndarray, squeeze: bool, timeout: float | None) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the batcher is closed and accepts no more requests")
            if self._queued_images + req_x.shape[0] > self.max_queue:
                self._stats["rejected"] += 1
                raise QueueFullError(f"batcher queue is full ({self._queued_images} of {self.max_queue} images "
                                     "waiting)", hint="retry later or raise max_queue")
            now = self._clock()
            req_x = np.array(req_x, copy=True, order="C")  # queued: the caller may reuse its buffer meanwhile
            self._queue.append(_Request(req_x, squeeze, now, None if timeout is None else now + timeout, fut))
            self._queued_images += req_x.shape[0]
            self._stats["requests"] += 1
            self._cond.notify()
        return fut

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
        fut = self._enqueue(req_x, squeeze, timeout)
        try:
            return fut.result(timeout=timeout)
        except RequestTimeoutError:  # expired in the queue (a TimeoutError too: keep its message)
            raise
        except concurrent.futures.CancelledError:
            raise BatcherClosedError("the request was cancelled: the batcher was closed before it ran") from None
        except concurrent.futures.TimeoutError:
            fut.cancel()  # dequeued unless it already runs
            raise RequestTimeoutError(f"request did not complete within {timeout} s",
                                      hint="raise the timeout or lower the load") from None

    async def infer_async(self, x: np.ndarray, timeout: float | None = None) -> Outputs:
        """`infer` for asyncio: awaits the batch without blocking the event loop."""
        timeout = self._timeout(timeout)
        fut = self.submit(x, timeout)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except RequestTimeoutError:
            raise
        except asyncio.CancelledError:
            if fut.cancelled() and self._closed:
                raise BatcherClosedError("the request was cancelled: the batcher was closed before it ran") from None
            raise
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"request did not complete within {timeout} s",
                                      hint="raise the timeout or lower the load") from None

    def _claim_idle(self, n: int) -> bool:
        """Reserve the model for a request the caller runs itself (see `infer`); only with a worker thread."""
        if self._thread is None:
            return False
        with self._cond:
            if self._closed or self._busy or self._queue:
                return False
            if not (self.policy.max_delay_s == 0 or n >= self.policy.target):
                return False
            self._busy = True
            self._inline_sizes[n] += 1  # one counter on the hot path; stats() derives the rest
            return True

    def _run_claimed(self, x: np.ndarray, squeeze: bool) -> Outputs:
        try:
            out = self._fn(x)
        except Exception:
            self._count("failed")
            raise
        finally:
            with self._cond:
                self._busy = False
                if self._queue:  # requests arrived meanwhile; waking an idle worker for nothing costs a switch
                    self._cond.notify()
        return {k: v[0] for k, v in out.items()} if squeeze else out

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

    # ------------------------------------------------------------------------------------ scheduling
    def _take(self, flush: bool) -> tuple[list[_Request], list[_Request]]:
        """(next batch or [], expired requests); call with the lock held."""
        now = self._clock()
        expired = [r for r in self._queue if r.future.cancelled() or (r.deadline is not None and now >= r.deadline)]
        if expired:
            for r in expired:
                self._queue.remove(r)
                self._queued_images -= r.n
        if not self._queue:
            return [], expired
        k = self.policy.select([r.n for r in self._queue], self._queue[0].arrival, now, flush=flush)
        batch = [self._queue.popleft() for _ in range(k)]
        self._queued_images -= sum(r.n for r in batch)
        return batch, expired

    def next_event(self) -> float | None:
        """Clock time at which the oldest request falls due or a queued request expires (None: queue empty)."""
        with self._cond:
            if not self._queue:
                return None
            times = [self.policy.due(self._queue[0].arrival)]
            times += [r.deadline for r in self._queue if r.deadline is not None]
            return min(times)

    def _wait_s(self) -> float | None:
        event = self.next_event()
        return None if event is None else max(0.0, event - self._clock())

    def _fail_expired(self, expired: list[_Request]) -> None:
        now = self._clock()
        for r in expired:
            if r.future.cancelled():
                self._count("cancelled")
            elif r.future.set_running_or_notify_cancel():
                self._count("timed_out")
                r.future.set_exception(RequestTimeoutError(
                    f"request timed out after {now - r.arrival:.3g} s in the batcher queue",
                    hint="raise the timeout or lower the load"))

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self._stats[key] += n

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._busy:  # one batch at a time: an inline `infer` may hold the model
                        batch, expired = self._take(flush=self._draining)
                        if batch or expired:
                            self._busy = bool(batch)
                            break
                        if self._closed and not self._queue:
                            return
                    self._cond.wait(None if self._busy else self._wait_s())
            self._fail_expired(expired)
            if batch:
                try:
                    self._run(batch)
                finally:
                    with self._cond:
                        self._busy = False

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if len(live) < len(batch):
            self._count("cancelled", len(batch) - len(live))
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([r.x for r in live])
        with self._cond:
            self._stats["batches"] += 1
            self._stats["images"] += x.shape[0]
            self._batch_sizes[x.shape[0]] += 1
        try:
            out = self._fn(x)
        except Exception as exc:  # noqa: BLE001 - a backend failure belongs to the requests, not the worker
            if len(live) == 1:
                self._count("failed")
                live[0].future.set_exception(exc)
                return
            for r in live:  # isolate the request that breaks the batch; the others still get results
                try:
                    self._deliver(r, self._fn(r.x), 0)
                except Exception as one:  # noqa: BLE001
                    self._count("failed")
                    r.future.set_exception(one)
            return
        start = 0
        for r in live:
            self._deliver(r, out, start)
            start += r.n

    @staticmethod
    def _deliver(r: _Request, out: Outputs, start: int) -> None:
        if r.squeeze:
            r.future.set_result({k: v[start] for k, v in out.items()})
        else:
            r.future.set_result({k: v[start:start + r.n] for k, v in out.items()})

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
                batch, expired = self._take(flush=self._draining)
            self._fail_expired(expired)
            if not batch:
                return ran
            self._run(batch)
            ran += 1

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; run (drain) or cancel what is queued; wait for the worker."""
        with self._cond:
            self._closed = True
            if drain:
                self._draining = True
            else:
                while self._queue:
                    r = self._queue.popleft()
                    if r.future.cancel():
                        self._stats["cancelled"] += 1
                self._queued_images = 0
            self._cond.notify_all()
        if self._thread is None:
            self.step()
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout)

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
        """Counters: requests, images, batches, rejected, timed_out, cancelled, failed, batch_sizes {n: count}."""
        with self._cond:
            stats, sizes = self._stats.copy(), self._batch_sizes + self._inline_sizes
            inline = sum(self._inline_sizes.values())
            stats.update(requests=inline, batches=inline, images=sum(k * v for k, v in self._inline_sizes.items()))
            keys = ("requests", "images", "batches", "rejected", "timed_out", "cancelled", "failed")
            return {k: stats[k] for k in keys} | {"batch_sizes": dict(sorted(sizes.items()))}
