"""The dynamic batching rule, as a pure function of the queue, shared by the live batcher and the simulator.

Requests (one image or a few) wait in FIFO order; a request is never split across batches. With
`pending` = the longest run of whole requests from the head whose images fit in `max_batch`, a batch is
sent when

1. `pending` reaches the target size (the largest preferred size, else `max_batch`), or the next queued
   request does not fit (the batch cannot grow): it is *full*;
2. the oldest request has waited `max_delay_s` (its due time `arrival + max_delay_s` has come);
3. the caller flushes (shutdown with drain).

A full batch is cut at the largest preferred size that a prefix of whole requests forms exactly, so the
remainder starts the next batch; a batch sent on delay or flush takes everything pending (waiting longer for
a preferred size would only add latency). This follows Triton's dynamic batcher (preferred sizes are targets
to send early at, `max_queue_delay` bounds the wait), restricted to one model instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import DeploymtlError


@dataclass(frozen=True)
class BatchPolicy:
    """When to send a batch and how big. Sizes count images; times are seconds on the caller's clock."""

    max_batch: int = 8
    max_delay_s: float = 0.005
    preferred: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise DeploymtlError(f"batcher max_batch is {self.max_batch!r}", hint="expected an integer >= 1")
        if not self.max_delay_s >= 0:  # also rejects NaN
            raise DeploymtlError(f"batcher max_delay is {self.max_delay_s!r} s", hint="expected >= 0")
        bad = [p for p in self.preferred if not isinstance(p, int) or not 1 <= p <= self.max_batch]
        if bad:
            raise DeploymtlError(f"batcher preferred batch sizes {bad} are outside 1..{self.max_batch}",
                                 hint="expected sizes between 1 and max_batch")
        object.__setattr__(self, "preferred", tuple(sorted(set(self.preferred))))

    @property
    def target(self) -> int:
        """The size at which a batch is sent without waiting."""
        return self.preferred[-1] if self.preferred else self.max_batch

    def due(self, oldest_arrival: float) -> float:
        """When the oldest request's queueing delay runs out."""
        return oldest_arrival + self.max_delay_s

    def select(self, sizes: Sequence[int], oldest_arrival: float, now: float, flush: bool = False) -> int:
        """How many requests from the head of the queue form the next batch now; 0 = keep waiting.

        `sizes`: images per queued request, oldest first (each <= max_batch, checked on submit).
        """
        prefix: list[int] = []
        total = 0
        for s in sizes:
            if total + s > self.max_batch:
                break
            total += s
            prefix.append(total)
        if not prefix:
            return 0
        if total >= self.target or len(prefix) < len(sizes):
            for p in reversed(self.preferred):
                if p in prefix:
                    return prefix.index(p) + 1
            return len(prefix)
        if flush or now >= self.due(oldest_arrival):
            return len(prefix)
        return 0
