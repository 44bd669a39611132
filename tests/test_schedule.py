"""Periodic actions: tick planning, catch-up policies, and exactly-once firing across callers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from actionbus import (
    BaseWorker,
    CommonAppSettings,
    ConfigurationError,
    DelayedActionError,
    DelayedQueue,
    DomainAction,
    QueueManager,
    RedisManager,
)
from actionbus.delayed import to_epoch_ms
from actionbus.schedule import (
    Schedule,
    TickPlan,
    fire_tick,
    latest_tick,
    plan_tick,
    tick,
    tick_action,
)

QM = QueueManager("dev")
NOW = datetime(2026, 11, 30, 10, 7, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def ms(when: datetime) -> int:
    """Epoch milliseconds of ``when``."""
    return to_epoch_ms(when)


@pytest_asyncio.fixture(params=["standalone", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """An emptied Redis: the standalone test server, then the 3-master cluster."""
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    settings = CommonAppSettings(_env_file=None, service_name="tests", redis_url=url,
                                 redis_cluster=cluster)
    async with RedisManager(settings) as manager:
        yield manager.get_client()


def test_latest_tick_of_intervals_and_cron() -> None:
    """The latest tick at or before now: epoch-aligned intervals, cron including an exact hit."""
    assert latest_tick(Schedule(every=MINUTE, action_type="inv.a.b"), NOW) == NOW.replace(second=0)
    five = Schedule(cron="*/5 * * * *", action_type="inv.a.b")
    assert latest_tick(five, NOW) == NOW.replace(minute=5, second=0)
    exact = NOW.replace(minute=10, second=0)
    assert latest_tick(five, exact) == exact


def test_schedule_validation_and_default_name() -> None:
    """A schedule needs exactly one valid cron or positive interval; its name defaults to both."""
    assert Schedule(every=MINUTE, action_type="inv.a.b").name == "inv.a.b@60s"
    assert Schedule(cron="0 * * * *", action_type="inv.a.b").name == "inv.a.b@0 * * * *"
    for bad in (
        {}, {"cron": "* * * * *", "every": MINUTE}, {"cron": "61 * * * *"},
        {"every": timedelta(0)}, {"every": MINUTE, "missed": "all"},
    ):
        with pytest.raises(ConfigurationError):
            Schedule(action_type="inv.a.b", **bad)


def test_cron_without_croniter_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without croniter installed, a cron schedule fails naming the [schedule] extra."""
    monkeypatch.setitem(sys.modules, "croniter", None)
    with pytest.raises(ConfigurationError, match=r"actionbus\[schedule\]"):
        Schedule(cron="* * * * *", action_type="inv.a.b")
    assert Schedule(every=MINUTE, action_type="inv.a.b").every == MINUTE


def test_plan_tick_first_sight_on_time_and_already_done() -> None:
    """A new schedule records its latest tick unfired; a later tick fires; the same tick not."""
    every = Schedule(every=MINUTE, action_type="inv.a.b")
    tick_ms = ms(NOW.replace(second=0))
    assert plan_tick(every, NOW, None) == TickPlan(tick_ms, fire=False)
    assert plan_tick(every, NOW, tick_ms) is None
    assert plan_tick(every, NOW, tick_ms - 60_000) == TickPlan(tick_ms, fire=True)


@pytest.mark.parametrize(("missed", "fires"), [("fire_once", True), ("skip", False)])
def test_plan_tick_catch_up_policy(missed: Any, fires: bool) -> None:
    """After an outage the latest missed tick fires once, or is recorded unfired with skip."""
    hourly = Schedule(cron="0 * * * *", action_type="inv.a.b", missed=missed)
    long_ago = ms(NOW - timedelta(hours=5))
    assert plan_tick(hourly, NOW, long_ago) == TickPlan(ms(NOW.replace(minute=0, second=0)), fires)
    # Within the grace period the latest tick is not "missed": it fires under either policy.
    assert plan_tick(hourly, NOW.replace(minute=0, second=59), long_ago).fire is True  # type: ignore[union-attr]


def test_tick_action_is_deterministic() -> None:
    """Every worker builds the same action for one tick; another tick gets another id."""
    schedule = Schedule(every=MINUTE, action_type="reports.daily.build", data={"x": 1})
    first = tick_action(schedule, "inventory", 60_000)
    assert first.model_dump_json() == tick_action(schedule, "inventory", 60_000).model_dump_json()
    assert first.target == "inventory"
    assert first.timestamp == datetime.fromtimestamp(60, UTC)
    assert first.metadata["actionbus_schedule"] == schedule.name
    assert tick_action(schedule, "inventory", 120_000).action_id != first.action_id


async def test_fire_tick_is_exactly_once_and_never_goes_back(redis: Any) -> None:
    """The script fires a tick once; repeating it or an older tick is 'taken' and adds nothing."""
    schedule = Schedule(every=MINUTE, action_type="inv.a.b")
    queue = DelayedQueue(redis, QM, "inventory")
    results = await asyncio.gather(*(
        fire_tick(redis, QM, "inventory", schedule, TickPlan(600_000, True)) for _ in range(3)))
    assert sorted(r.outcome for r in results) == ["fired", "taken", "taken"]
    old = await fire_tick(redis, QM, "inventory", schedule, TickPlan(540_000, True))
    assert old.outcome == "taken"
    assert await queue.count() == 1
    assert (await fire_tick(redis, QM, "inventory", schedule, TickPlan(660_000, False))).outcome \
        == "skipped"
    assert await queue.count() == 1


async def test_three_callers_fire_each_tick_once(redis: Any) -> None:
    """Three workers ticking concurrently over five minutes put exactly five actions in a stream."""
    schedule = Schedule(every=MINUTE, action_type="inventory.report.build", data={"k": 1})
    queue = DelayedQueue(redis, QM, "inventory")
    assert await tick(redis, QM, "inventory", [schedule], NOW) == [
        (schedule.name, ms(NOW.replace(second=0)), "skipped")]
    for minute in range(1, 6):
        now = NOW + minute * MINUTE
        done = await asyncio.gather(*(tick(redis, QM, "inventory", [schedule], now)
                                      for _ in range(3)))
        assert [r.outcome for results in done for r in results].count("fired") == 1
    assert (await queue.move_due_report(now_ms=ms(NOW + 6 * MINUTE))).moved == 5
    entries = await redis.xrange(QM.get_service_action_stream("inventory"))
    actions = [DomainAction.model_validate_json(f[b"data"]) for _id, f in entries]
    assert [a.timestamp for a in actions] == [
        NOW.replace(second=0) + m * MINUTE for m in range(1, 6)]
    assert len({a.action_id for a in actions}) == 5


@pytest.mark.parametrize(("missed", "fired"), [("fire_once", 1), ("skip", 0)])
async def test_missed_ticks_fire_once_or_are_skipped(redis: Any, missed: Any, fired: int) -> None:
    """After ten missed minutes one action fires (fire_once) or none (skip); the next tick fires."""
    schedule = Schedule(every=MINUTE, action_type="inventory.report.build", missed=missed,
                        grace=timedelta(seconds=5))
    queue = DelayedQueue(redis, QM, "inventory")
    await tick(redis, QM, "inventory", [schedule], NOW)
    back = NOW + 10 * MINUTE
    await asyncio.gather(*(tick(redis, QM, "inventory", [schedule], back) for _ in range(3)))
    assert await queue.count() == fired
    on_time = back.replace(second=0) + MINUTE + timedelta(seconds=1)
    assert [r.outcome for r in await tick(redis, QM, "inventory", [schedule], on_time)] == [
        "fired"]
    assert await queue.count() == fired + 1


async def test_tick_refuses_duplicate_names(redis: Any) -> None:
    """Two schedules with one name would share a tick record, so tick() refuses them."""
    same = Schedule(every=MINUTE, action_type="inv.a.b", name="x")
    assert await tick(redis, QM, "inventory", []) == []
    with pytest.raises(DelayedActionError, match="repeated: \\['x'\\]"):
        await tick(redis, QM, "inventory", [same, same])


def test_worker_schedule_keeps_every_argument_and_the_defaults() -> None:
    """worker.schedule() records a Schedule with what it was given (cron, data, name,
    missed, grace) and, when not given, empty data and the default name."""
    worker = BaseWorker(CommonAppSettings(_env_file=None, service_name="inventory"))
    given = worker.schedule("*/5 * * * *", "inventory.stock.count", data={"a": 1}, name="n1",
                            missed="skip", grace=timedelta(seconds=5))
    assert given == Schedule(action_type="inventory.stock.count", cron="*/5 * * * *",
                             data={"a": 1}, name="n1", missed="skip",
                             grace=timedelta(seconds=5))
    plain = worker.schedule(action_type="inventory.stock.sync", every=timedelta(seconds=90))
    assert (plain.data, plain.name, plain.missed, plain.grace) == (
        {}, "inventory.stock.sync@90s", "fire_once", timedelta(seconds=60))
    assert worker.schedules == [given, plain]
