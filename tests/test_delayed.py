"""DelayedQueue: the delayed set, its mover and the retry script, on Redis and on a cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from actionbus import (
    CommonAppSettings,
    DelayedActionError,
    DelayedQueue,
    DomainAction,
    QueueManager,
    RedisManager,
)
from actionbus.delayed import deliveries_of, seconds_until, to_epoch_ms, with_deliveries

QM = QueueManager("dev")
T0 = 1_795_320_000_000  # a fixed "now" in epoch ms


@pytest_asyncio.fixture(params=["standalone", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """An emptied Redis: the standalone test server, then the 3-master cluster."""
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    settings = CommonAppSettings(_env_file=None, service_name="tests", redis_url=url,
                                 redis_cluster=cluster)
    async with RedisManager(settings) as manager:
        yield manager.get_client()


def action(n: int = 0, **extra: Any) -> DomainAction:
    """An action for the ``inventory`` service."""
    return DomainAction(action_type="inventory.stock.count", data={"n": n}, **extra)


async def stream_data(redis: Any, service: str = "inventory") -> list[str]:
    """The ``data`` field of every entry of the service's stream, oldest first."""
    entries = await redis.xrange(QM.get_service_action_stream(service))
    return [fields[b"data"].decode() for _id, fields in entries]


async def test_add_count_and_list_soonest_first(redis: Any) -> None:
    """add() stores the action JSON scored by due ms; list() returns soonest first with ids."""
    queue = DelayedQueue(redis, QM, "inventory")
    late, soon = action(1), action(2)
    assert await queue.add(late, T0 + 5000) == str(late.action_id)
    await queue.add(soon, datetime.fromtimestamp((T0 + 1000) / 1000, UTC))
    assert await queue.count() == 2
    first, second = await queue.list()
    assert (first.due_ms, first.action_id, first.action_type) == (
        T0 + 1000, str(soon.action_id), "inventory.stock.count")
    assert first.due_at == datetime.fromtimestamp((T0 + 1000) / 1000, UTC)
    assert DomainAction.model_validate_json(second.member) == late
    assert [e.due_ms for e in await queue.list(limit=1)] == [T0 + 1000]


async def test_mover_moves_only_due_entries_and_reports_the_next(redis: Any) -> None:
    """Due entries enter the stream as field ``data``; later ones stay; the next due is given."""
    queue = DelayedQueue(redis, QM, "inventory")
    due, later = action(1), action(2)
    await queue.add(due, T0 - 30)
    await queue.add(later, T0 + 500)
    report = await queue.move_due_report(now_ms=T0)
    assert (report.moved, report.next_due_ms, report.now_ms) == (1, T0 + 500, T0)
    assert report.lateness_ms == (30,)
    assert [DomainAction.model_validate_json(d) for d in await stream_data(redis)] == [due]
    assert await queue.count() == 1
    report = await queue.move_due_report(now_ms=T0 + 500)
    assert (report.moved, report.next_due_ms) == (1, None)
    assert await queue.count() == 0


async def test_mover_batch_is_bounded(redis: Any) -> None:
    """One mover run moves at most max_batch entries, soonest first."""
    queue = DelayedQueue(redis, QM, "inventory")
    for n in range(5):
        await queue.add(action(n), T0 - 100 + n)
    report = await queue.move_due_report(max_batch=2, now_ms=T0)
    assert (report.moved, report.next_due_ms) == (2, T0 - 98)
    assert [json.loads(d)["data"]["n"] for d in await stream_data(redis)] == [0, 1]
    with pytest.raises(ValueError, match="max_batch"):
        await queue.move_due_report(max_batch=0)


async def test_mover_uses_the_server_clock_by_default(redis: Any) -> None:
    """move_due() without a time moves what is due by Redis' clock and keeps the future."""
    queue = DelayedQueue(redis, QM, "inventory")
    now = datetime.now(UTC)
    await queue.add(action(1), now - timedelta(seconds=5))
    await queue.add(action(2), now + timedelta(hours=1))
    moved, next_due = await queue.move_due()
    assert moved == 1
    assert next_due == to_epoch_ms(now + timedelta(hours=1))
    assert await queue.move_due() == (0, next_due)


async def test_add_after_uses_the_server_clock(redis: Any) -> None:
    """add_after() dues the action at Redis' clock plus the delay and returns that time."""
    queue = DelayedQueue(redis, QM, "inventory")
    seconds, micros = await redis.time()
    before = seconds * 1000 + micros // 1000
    sent = action(1)
    action_id, due = await queue.add_after(sent, timedelta(minutes=10))
    seconds, micros = await redis.time()
    after = seconds * 1000 + micros // 1000
    assert action_id == str(sent.action_id)
    assert before + 600_000 <= due <= after + 600_000
    assert [e.due_ms for e in await queue.list()] == [due]
    assert (await queue.move_due_report(now_ms=due - 1)).moved == 0
    assert (await queue.add_after('{"action_type":"inventory.a.b"}', 0))[0] is None
    with pytest.raises(DelayedActionError, match="zero or positive"):
        await queue.add_after(sent, -1)


def test_seconds_until_the_next_due_time() -> None:
    """The mover sleeps until the next due time, capped by its ceiling and never negative."""
    assert seconds_until(None, T0, 0.5) == 0.5
    assert seconds_until(T0 + 200, T0, 0.5) == 0.2
    assert seconds_until(T0 + 2000, T0, 0.5) == 0.5
    assert seconds_until(T0 - 10, T0, 0.5) == 0.0


async def test_a_foreign_zadd_is_delivered_byte_for_byte(redis: Any) -> None:
    """One ZADD of action JSON by another language reaches the stream unchanged."""
    member = '{"action_type":"inventory.stock.count","data":{"sku":"é"}}'
    await redis.zadd("actionbus:dev:{inventory}:delayed:main", {member: T0})
    queue = DelayedQueue(redis, QM, "inventory")
    assert (await queue.list())[0].action_id is None
    assert (await queue.move_due_report(now_ms=T0)).moved == 1
    assert await stream_data(redis) == [member]


async def test_concurrent_movers_move_each_entry_exactly_once(redis: Any) -> None:
    """Three movers racing over 300 due entries put each in the stream once and lose none."""
    queues = [DelayedQueue(redis, QM, "inventory") for _ in range(3)]
    sent = [action(n) for n in range(300)]
    for start in range(0, 300, 100):
        batch = sent[start:start + 100]
        await redis.zadd(queues[0].key, {a.model_dump_json(): T0 - 1 for a in batch})

    async def drain(queue: DelayedQueue) -> int:
        total = 0
        while (report := await queue.move_due_report(max_batch=7, now_ms=T0)).moved:
            total += report.moved
        return total

    totals = await asyncio.gather(*(drain(q) for q in queues))
    assert sum(totals) == 300
    moved = [json.loads(d)["data"]["n"] for d in await stream_data(redis)]
    assert sorted(moved) == list(range(300))
    assert await queues[0].count() == 0


async def test_cancel_by_action_id(redis: Any) -> None:
    """cancel() removes only the action with that id, not one mentioning it in its data."""
    queue = DelayedQueue(redis, QM, "inventory")
    keep, drop = action(1), action(2)
    mention = DomainAction(action_type="inventory.a.b", data={"about": str(drop.action_id)})
    for queued in (keep, drop, mention):
        await queue.add(queued, T0)
    assert await queue.cancel(str(drop.action_id)) is True
    assert await queue.cancel(drop.action_id) is False
    left = {e.action_id for e in await queue.list()}
    assert left == {str(keep.action_id), str(mention.action_id)}


async def test_cancel_finds_foreign_spelling_and_misses_moved(redis: Any) -> None:
    """cancel() matches an upper-case id with spaces in foreign JSON, and not a moved action."""
    queue = DelayedQueue(redis, QM, "inventory")
    ident = "0f8fad5b-d9cb-469f-a165-70867728950e"
    member = f'{{"action_id": "{ident.upper()}", "action_type": "inventory.a.b"}}'
    await redis.zadd(queue.key, {member: T0})
    assert await queue.cancel(ident) is True
    moved = action(3)
    await queue.add(moved, T0)
    await queue.move_due_report(now_ms=T0)
    assert await queue.cancel(moved.action_id) is False
    with pytest.raises(DelayedActionError, match="not an action id"):
        await queue.cancel("*")


async def test_add_refuses_naive_times_and_other_services(redis: Any) -> None:
    """add() refuses a naive datetime and an action addressed to another service."""
    queue = DelayedQueue(redis, QM, "inventory")
    with pytest.raises(DelayedActionError, match="no timezone"):
        await queue.add(action(), datetime(2030, 1, 1))
    with pytest.raises(DelayedActionError, match="'orders', not 'inventory'"):
        await queue.add(DomainAction(action_type="orders.x.y"), T0)
    assert await queue.count() == 0


async def test_retry_later_parks_then_acknowledges_atomically(redis: Any) -> None:
    """retry_later adds the payload (with its deliveries) to the set and XACKs the entry once."""
    queue = DelayedQueue(redis, QM, "inventory")
    await redis.xgroup_create(queue.stream, "inventory", id="0", mkstream=True)
    raw = action(7).model_dump_json()
    await redis.xadd(queue.stream, {"data": raw})
    (_stream, [(entry_id, fields)]), = await redis.xreadgroup(
        "inventory", "c1", {queue.stream: ">"})
    payload = with_deliveries(fields[b"data"], 3)
    assert await queue.retry_later(queue.stream, "inventory", entry_id, payload, T0 + 100)
    assert (await redis.xpending(queue.stream, "inventory"))["pending"] == 0
    [entry] = await queue.list()
    assert entry.due_ms == T0 + 100
    assert deliveries_of(DomainAction.model_validate_json(entry.member)) == 3
    assert not await queue.retry_later(queue.stream, "inventory", entry_id, payload + " ", T0)
    assert await queue.count() == 1


async def test_retry_later_refuses_another_services_stream(redis: Any) -> None:
    """retry_later only parks entries of its own service's stream."""
    queue = DelayedQueue(redis, QM, "inventory")
    with pytest.raises(DelayedActionError, match="same service"):
        await queue.retry_later(QM.get_service_action_stream("orders"), "g", "1-0", "{}", T0)


def test_with_deliveries_keeps_everything_else() -> None:
    """with_deliveries sets only metadata.actionbus_deliveries; non-objects are refused."""
    raw = '{"action_type":"a.b.c","extra":[1],"metadata":{"traceparent":"x"}}'
    out = json.loads(with_deliveries(raw, 2))
    assert out == {"action_type": "a.b.c", "extra": [1],
                   "metadata": {"traceparent": "x", "actionbus_deliveries": 2}}
    assert deliveries_of(DomainAction(action_type="a.b.c")) == 0
    for bad in ("[1]", "nope", b"\xff"):
        with pytest.raises(DelayedActionError, match="not a JSON object"):
            with_deliveries(bad, 1)


async def test_delayed_actions_survive_a_redis_restart_with_aof(
    fresh_redis_server_aof: Any,
) -> None:
    """A delayed action written with AOF on is still there, and moves, after a restart."""
    settings = CommonAppSettings(_env_file=None, service_name="t",
                                 redis_url=fresh_redis_server_aof.url)
    kept = action(9)
    async with RedisManager(settings) as manager:
        await DelayedQueue(manager.get_client(), QM, "inventory").add(kept, T0)
    fresh_redis_server_aof.kill()
    fresh_redis_server_aof.start()
    async with RedisManager(settings) as manager:
        queue = DelayedQueue(manager.get_client(), QM, "inventory")
        assert (await queue.move_due_report(now_ms=T0)).moved == 1
        assert await stream_data(manager.get_client()) == [kept.model_dump_json(exclude_none=True)]
