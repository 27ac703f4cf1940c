"""The dynamic batching rule (BatchPolicy.select) as a pure function: sizes, due times, preferred cuts."""

from __future__ import annotations

import pytest

from deploymtl.errors import DeploymtlError
from deploymtl.runtime import BatchPolicy


def test_waits_until_full_or_due():
    p = BatchPolicy(max_batch=4, max_delay_s=0.010)
    assert p.select([1, 1, 1], oldest_arrival=0.0, now=0.0) == 0
    assert p.select([1, 1, 1], oldest_arrival=0.0, now=0.0099) == 0
    assert p.select([1, 1, 1], oldest_arrival=0.0, now=0.010) == 3  # due exactly at arrival + max_delay
    assert p.select([1, 1, 1, 1], oldest_arrival=0.0, now=0.0) == 4  # full: no waiting
    assert p.select([1] * 6, oldest_arrival=0.0, now=0.0) == 4  # never more than max_batch


def test_requests_are_never_split():
    p = BatchPolicy(max_batch=4, max_delay_s=1.0)
    # 3 + 2 > 4: the batch cannot grow, so it goes now with the first request only
    assert p.select([3, 2], oldest_arrival=0.0, now=0.0) == 1
    assert p.select([2, 2, 2], oldest_arrival=0.0, now=0.0) == 2
    assert p.select([2], oldest_arrival=0.0, now=0.5) == 0


def test_preferred_sizes_send_early_and_cut_full_batches():
    p = BatchPolicy(max_batch=8, max_delay_s=1.0, preferred=(4, 2))
    assert p.preferred == (2, 4) and p.target == 4
    assert p.select([1, 1, 1], oldest_arrival=0.0, now=0.0) == 0  # 3 < largest preferred: wait
    assert p.select([1] * 4, oldest_arrival=0.0, now=0.0) == 4  # preferred size reached: go
    assert p.select([1] * 6, oldest_arrival=0.0, now=0.0) == 4  # cut at the largest preferred size
    assert p.select([3, 2], oldest_arrival=0.0, now=0.0) == 2  # 5 >= 4 but no prefix sums to 4 or 2: all
    assert p.select([1, 1, 1], oldest_arrival=0.0, now=1.0) == 3  # on delay, everything pending goes


def test_flush_sends_everything_pending():
    p = BatchPolicy(max_batch=4, max_delay_s=10.0)
    assert p.select([1], oldest_arrival=0.0, now=0.0, flush=True) == 1
    assert p.select([], oldest_arrival=0.0, now=0.0, flush=True) == 0


def test_zero_delay_is_greedy():
    p = BatchPolicy(max_batch=8, max_delay_s=0.0)
    assert p.select([1], oldest_arrival=5.0, now=5.0) == 1


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_batch": 0}, "max_batch"),
    ({"max_delay_s": -0.001}, "max_delay"),
    ({"max_delay_s": float("nan")}, "max_delay"),
    ({"max_batch": 4, "preferred": (8,)}, "preferred batch sizes [8]"),
])
def test_invalid_policy(kwargs, fragment):
    with pytest.raises(DeploymtlError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        BatchPolicy(**kwargs)
