"""The one backoff helper: exponential ceilings, equal jitter, state, redis-py compatibility."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.backoff import AbstractBackoff

from actionbus import CommonAppSettings, WorkerSettings
from actionbus.backoff import Backoff, cancel_and_wait, exponential
from actionbus.connection import connection_options


def test_exponential_doubles_then_caps() -> None:
    """The ceiling is base * 2**attempt, capped, and never negative or overflowing."""
    assert [exponential(0.1, 1.0, n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert exponential(0.1, 1.0, -3) == 0.1
    assert exponential(0.1, 1e30, 10_000) == 0.1 * 2**30


def test_equal_jitter_stays_in_the_upper_half() -> None:
    """Every delay lies in [ceiling/2, ceiling]; the spread really is random within it."""
    rng_state = random.getstate()
    random.seed(12)
    try:
        backoff = Backoff(base=0.1, cap=10.0)
        for failures in range(8):
            ceiling = exponential(0.1, 10.0, failures)
            delays = [backoff.compute(failures) for _ in range(200)]
            assert min(delays) >= ceiling / 2
            assert max(delays) <= ceiling
            assert min(delays) < ceiling * 0.55
            assert max(delays) > ceiling * 0.95
    finally:
        random.setstate(rng_state)


def test_next_delay_grows_caps_and_resets() -> None:
    """next_delay() climbs one step per call up to the cap; reset() starts over."""
    backoff = Backoff(base=1.0, cap=4.0, jitter=False)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize("deliveries", [1, 2, 3, 4, 9])
def test_retry_delay_is_the_unjittered_backoff(deliveries: int) -> None:
    """The delay between a failed action's attempts is the same helper without jitter."""
    settings = WorkerSettings(retry_backoff_base_s=0.5, retry_backoff_max_s=3)
    expected = Backoff(0.5, 3.0, jitter=False).compute(deliveries - 1)
    assert settings.retry_delay(deliveries) == expected


def test_backoff_drives_redis_py_retries() -> None:
    """Connections retry through redis-py's Retry with this Backoff (an AbstractBackoff)."""
    assert isinstance(Backoff(), AbstractBackoff)
    retry = connection_options(CommonAppSettings(service_name="b"))["retry"]
    backoff = next(v for v in vars(retry).values() if isinstance(v, AbstractBackoff))
    assert isinstance(backoff, Backoff)
    assert 0.05 <= backoff.compute(1) <= 0.1


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_it() -> None:
    """A loop that swallows its first cancellation (as redis-py's per-write wait_for does on
    Python 3.11) is cancelled again, so cancel_and_wait returns and the task has ended."""
    swallowed = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the write completed: the caller goes on

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], again_after=0.05), 10)
    assert swallowed.is_set()
    assert task.cancelled()
