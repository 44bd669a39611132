"""No background loop dies silently; reading never waits on recovery and reclaim."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import RedisClusterException

import actionbus.backoff
import actionbus.workers.supervisor
from actionbus import BaseWorker, DomainAction, WorkerFailedError
from actionbus.backoff import Backoff
from actionbus.workers.health import SlowCommands
from actionbus.workers.reader import StreamReader, spread
from actionbus.workers.supervisor import supervise
from actionbus.workers.upkeep import Upkeep
from tests.conftest import fast_worker_settings
from tests.workers.helpers import Settings, drained

pytestmark = pytest.mark.backends


async def test_read_loop_survives_a_cluster_exception(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read loop that raises RedisClusterException (not a RedisError) is restarted."""
    original = StreamReader.run
    calls: list[int] = []

    async def flaky(self: StreamReader, stopping: asyncio.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RedisClusterException("Redis Cluster cannot be connected")
        await original(self, stopping)

    monkeypatch.setattr(StreamReader, "run", flaky)
    handled: list[int] = []

    async def handle(action: DomainAction, data: Any) -> None:
        handled.append(data["i"])

    worker = bus.worker("inventory")
    worker.register("inventory.item.n", handle)
    await worker.start()
    await bus.client("orders").send_action_async(
        DomainAction(action_type="inventory.item.n", data={"i": 1}))
    await eventually(lambda: handled == [1], timeout=10)
    print(f"read loop started {len(calls)} times; handled {handled}")
    assert len(calls) >= 2


async def test_a_loop_that_dies_for_good_fails_run(
    make_settings: Settings, conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop failing with a bug again and again stops the worker: run() raises."""
    async def broken(self: Upkeep) -> None:
        raise KeyError("a bug in the loop's own code")

    monkeypatch.setattr(Upkeep, "run", broken)
    worker = BaseWorker(make_settings(service_name="inventory"), conn,
                        worker_settings=fast_worker_settings())
    with pytest.raises(WorkerFailedError, match="KeyError") as caught:
        await asyncio.wait_for(worker.run(), 30)
    print(f"run() raised: {caught.value}; health: {worker.health}")
    assert isinstance(worker.failed, KeyError)
    assert not worker.health.healthy


async def test_run_raises_worker_failed_caused_by_the_loop_error(
    make_settings: Settings, conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WorkerFailedError of run() carries the loop's exception as ``.cause`` and as its
    ``__cause__`` (the traceback shows it)."""
    async def broken(self: Upkeep) -> None:
        raise KeyError("a bug in the loop's own code")

    monkeypatch.setattr(Upkeep, "run", broken)
    worker = BaseWorker(make_settings(service_name="inventory"), conn,
                        worker_settings=fast_worker_settings())
    with pytest.raises(WorkerFailedError) as caught:
        await asyncio.wait_for(worker.run(), 30)
    assert isinstance(worker.failed, KeyError)
    assert caught.value.cause is worker.failed
    assert caught.value.__cause__ is worker.failed


async def test_supervise_restarts_after_any_exception(caplog: pytest.LogCaptureFixture) -> None:
    """supervise() logs an AttributeError from a half-closed connection and runs the loop
    again; it returns once the loop returns."""
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

    died: list[BaseException] = []
    await asyncio.wait_for(supervise("test loop", loop, on_death=died.append), 10)
    assert len(runs) == 3
    assert died == []
    assert sum("test loop failed" in r.message for r in caplog.records) == 2


async def test_reading_continues_while_reclaim_is_slow(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a reclaim round hangs, new actions are still read and handled."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_reclaim(self: StreamReader, free: int) -> None:
        entered.set()
        await release.wait()

    monkeypatch.setattr(StreamReader, "reclaim", slow_reclaim)
    handled: list[int] = []

    async def handle(action: DomainAction, data: Any) -> None:
        handled.append(data["i"])

    worker = bus.worker("inventory", reclaim_interval_s=0.05)
    worker.register("inventory.item.n", handle)
    await worker.start()
    try:
        await asyncio.wait_for(entered.wait(), 10)
        client = bus.client("orders")
        for i in range(3):
            await client.send_action_async(
                DomainAction(action_type="inventory.item.n", data={"i": i}))
        await eventually(lambda: sorted(handled) == [0, 1, 2], timeout=10)
        print(f"handled while reclaim hung: {handled}; reclaim still hung: "
              f"{not release.is_set()}")
        assert not release.is_set()
        await eventually(lambda: drained(bus.redis, "inventory"), timeout=10)
    finally:
        release.set()


def test_reclaim_timing_is_spread_across_consumers() -> None:
    """The first reclaim of each consumer is offset by a hash of its name."""
    offsets = {spread(f"host-{i}") for i in range(20)}
    assert len(offsets) == 20
    assert all(0 <= o < 1 for o in offsets)


def test_a_command_slower_than_the_socket_timeout_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A loop command that took longer than the socket timeout logs 'Redis slow/unavailable'
    and is counted, even though no error was raised."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    slow = SlowCommands(None, threshold=5.0)
    slow.check("XREADGROUP", 1.0)
    slow.check("XREADGROUP", 15.2)
    assert slow.count == 1
    assert [r.message for r in caplog.records if "slow/unavailable for 15.2s" in r.message]


async def test_a_loop_failing_five_times_in_a_row_dies_on_the_fifth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """By default supervise() gives a loop five runs that fail with a bug: the fifth
    failure stops it (on_death with that error, re-raised, logged as critical)."""
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        raise KeyError(f"bug {len(runs)}")

    died: list[BaseException] = []
    with pytest.raises(KeyError):
        await asyncio.wait_for(supervise(
            "test loop", loop, on_death=died.append, backoff=Backoff(base=0.001, cap=0.001)), 10)
    assert len(runs) == 5
    assert [str(e) for e in died] == ["'bug 5'"]
    assert any(r.levelname == "CRITICAL" and "died after 5 failures" in r.message
               for r in caplog.records)


async def test_outages_never_count_and_reset_the_count_of_failures() -> None:
    """Redis outages (transient errors) do not count towards the five failures, and one
    between two runs of bugs starts the count again: four bugs, an outage, four bugs, ten
    outages, then success, and the loop was never stopped."""
    plan: list[BaseException | None] = [
        *[KeyError("bug")] * 4, ConnectionError("outage"), *[KeyError("bug")] * 4,
        *[ConnectionError("outage")] * 10, None]
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        failure = plan[len(runs) - 1]
        if failure is not None:
            raise failure

    died: list[BaseException] = []
    await asyncio.wait_for(supervise(
        "test loop", loop, on_death=died.append, backoff=Backoff(base=0.001, cap=0.001)), 10)
    assert len(runs) == len(plan)
    assert died == []


async def test_on_error_runs_after_each_failure_with_its_exception() -> None:
    """supervise() hands each failure to ``on_error`` (e.g. a cluster topology refresh)
    before the loop runs again."""
    failures = [KeyError("one"), ConnectionError("two")]
    runs: list[int] = []
    seen: list[BaseException] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) <= len(failures):
            raise failures[len(runs) - 1]

    async def on_error(exc: BaseException) -> None:
        seen.append(exc)

    await asyncio.wait_for(supervise("test loop", loop, on_death=lambda exc: None,
                                     on_error=on_error,
                                     backoff=Backoff(base=0.001, cap=0.001)), 10)
    assert seen == failures
    assert len(runs) == 3


async def test_supervise_backs_off_from_a_tenth_of_a_second_doubling_up_to_five(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a backoff of its own, supervise() waits 0.1 s after the first failure,
    doubles the wait after each further one and never waits more than 5 s (the jitter's
    upper end taken, so the waits are the ceilings themselves)."""
    waits: list[float] = []

    async def no_wait(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(actionbus.workers.supervisor, "asyncio", SimpleNamespace(
        sleep=no_wait, CancelledError=asyncio.CancelledError))
    monkeypatch.setattr(actionbus.backoff, "random",
                        SimpleNamespace(uniform=lambda low, high: high))
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) <= 8:
            raise ConnectionError("outage")  # transient: never counts towards dying

    await asyncio.wait_for(supervise("test loop", loop, on_death=lambda exc: None), 10)
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
