"""One request of the dynamic batcher and the rules for ending it (batcher.py schedules; this file ends).

A `Request` is what waits in the queue; its future is a `RequestFuture`, whose `cancel()` takes the request out
of the queue at once. Whoever ends a request first *claims* it under the batcher's lock (`Request.outcome`);
only the claimant counts it and sets its future, with `complete` / `cancel_owned`, which keep anything a
done-callback raises away from the thread that ends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeploymtlError

Outputs = dict[str, np.ndarray]
log = logging.getLogger("deploymtl.runtime.batcher")
OUTCOMES = ("served", "failed", "cancelled", "timed_out")


class QueueFullError(DeploymtlError):
    """The batcher's queue holds `max_queue` images; retry later (HTTP 503)."""


class RequestTimeoutError(DeploymtlError, TimeoutError):
    """The request did not complete within its timeout."""


class BatcherClosedError(DeploymtlError):
    """The batcher was closed before the request ran."""


@dataclass(eq=False)  # identity: requests are told apart by who they are, never by comparing their arrays
class Request:
    x: np.ndarray  # n x C x H x W, owned by the batcher
    squeeze: bool  # the caller sent one C x H x W image
    arrival: float
    deadline: float | None
    future: RequestFuture
    queued: bool = True  # in the batcher's queue
    taken: bool = False  # a batch took it (counts as in flight until it ends)
    outcome: str | None = None  # one of OUTCOMES once claimed

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


class RequestFuture(concurrent.futures.Future):
    """A request's future: a successful `cancel()` takes the request out of the batcher's queue at once."""

    def __init__(self, withdraw: Callable[[Request], None]) -> None:
        super().__init__()
        self._withdraw = withdraw
        self._request: Request | None = None  # cleared when the request ends (no cycle outlives it)

    def cancel(self) -> bool:
        try:
            return super().cancel()  # runs the done-callbacks, which may raise into the caller
        finally:
            request = self._request
            if request is not None and self.cancelled():
                self._withdraw(request)


def complete(fut: concurrent.futures.Future, value: Any, failed: bool) -> None:
    """Set a future this thread owns. Its done-callbacks run here; nothing they raise may reach the caller."""
    try:
        if failed:
            fut.set_exception(value)
        else:
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled meanwhile by its holder: the cancel is its end
    except BaseException:  # noqa: BLE001 - a callback's BaseException (Future itself logs plain exceptions)
        log.exception("a done-callback of a batcher request raised")


def cancel_owned(fut: concurrent.futures.Future) -> None:
    """Cancel a queued future this thread took out of the queue, and wake `concurrent.futures.wait` callers."""
    try:
        concurrent.futures.Future.cancel(fut)  # the base method: the request is out of the queue already
        fut.set_running_or_notify_cancel()
    except BaseException:  # noqa: BLE001 - as in _complete
        log.exception("a done-callback of a batcher request raised")


def split_outputs(out: Any, parts: list[tuple[int, bool]]) -> list[Outputs]:
    """Each request's rows of a batch's outputs; `parts`: (images, squeeze) per request in batch order.
    An answer without one row per image is an error, never a silently shifted result."""
    if len(parts) == 1:  # the hot path (one request, often inline): check and take the rows in one pass
        n, squeeze = parts[0]
        try:
            one = {}
            for k, v in out.items():
                if v.shape[0] != n:
                    break
                one[k] = v[0] if squeeze else v
            else:
                if one:
                    return [one]
        except (AttributeError, IndexError, TypeError):  # not a dict, not an array, or 0-d
            pass
        _bad_outputs(out, n)
    total = sum(n for n, _ in parts)
    try:
        ok = isinstance(out, dict) and len(out) > 0 and all(v.shape[0] == total for v in out.values())
    except (AttributeError, IndexError, TypeError):
        ok = False
    if not ok:
        _bad_outputs(out, total)
    results, start = [], 0
    for n, squeeze in parts:
        if squeeze:
            results.append({k: v[start] for k, v in out.items()})
        else:
            results.append({k: v[start:start + n] for k, v in out.items()})
        start += n
    return results


def _bad_outputs(out: Any, total: int) -> None:
    got = {k: getattr(v, "shape", type(v).__name__) for k, v in out.items()} if isinstance(out, dict) else \
        type(out).__name__
    raise DeploymtlError(f"the batcher's model returned {got} for a batch of {total} image{'s' * (total != 1)}",
                         hint="expected {task: array with one row per image}")


def abandoned_error(outcome: str | None) -> BaseException:
    """What the future of a request holds when its caller stopped waiting (`outcome` as it was claimed)."""
    if outcome == "cancelled":
        return concurrent.futures.CancelledError()
    return RequestTimeoutError("the caller stopped waiting before the request completed",
                               hint="raise the timeout or lower the load")


def loop_mirror(fut: concurrent.futures.Future) -> asyncio.Future:
    """An asyncio future on the running loop that takes `fut`'s outcome, one way. Unlike `asyncio.wrap_future`,
    cancelling the mirror leaves `fut` alone (only the batcher ends a request), and a cancelled mirror ignores
    the outcome that arrives later, so a dropped one is never logged as "exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    mirror = loop.create_future()

    def copy(src: concurrent.futures.Future) -> None:  # on the loop
        if mirror.done():
            return
        if src.cancelled():
            mirror.cancel()
        elif (exc := src.exception()) is not None:
            mirror.set_exception(exc)
        else:
            mirror.set_result(src.result())

    def relay(src: concurrent.futures.Future) -> None:  # on the thread that ended the request
        try:
            loop.call_soon_threadsafe(copy, src)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for this outcome any more

    fut.add_done_callback(relay)
    return mirror


def drop(mirror: asyncio.Future) -> None:
    """The task stops waiting: the mirror's outcome, arrived or not, is dropped now (in the loop's thread, so no
    later turn of the loop is needed to mark it retrieved)."""
    if not mirror.cancel() and not mirror.cancelled():
        mirror.exception()  # it had arrived: mark it retrieved
