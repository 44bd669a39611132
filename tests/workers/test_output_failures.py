"""The output path: a write Redis refuses fails alone; permissions checked at start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    NoPermissionError,
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from actionbus import BaseWorker, DomainAction, PermissionsError
from actionbus.backoff import OutageLog
from actionbus.workers.failures import is_transient
from actionbus.workers.output import OutputBatcher
from tests.conftest import fast_worker_settings
from tests.workers.helpers import QM, Settings, drained, xadd_raw

pytestmark = pytest.mark.backends


@pytest.mark.parametrize(("exc", "transient"), [
    (ConnectionError("Error 111 connecting"), True),
    (TimeoutError("Timeout reading"), True),
    (OSError("reset"), True),
    (BusyLoadingError("Redis is loading the dataset in memory"), True),
    (ResponseError("BUSY Redis is busy running a script"), True),
    (TryAgainError("Multiple keys request during rehashing of slot"), True),
    (ClusterDownError("The cluster is down"), True),
    (OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), True),
    (RedisClusterException("Redis Cluster cannot be connected"), True),
    (AttributeError("'NoneType' object has no attribute 'writelines'"), True),
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    (NoPermissionError("this user has no permissions to run the 'lpush' command"), False),
    (AuthenticationError("WRONGPASS invalid username-password pair"), False),
    (ResponseError("NOAUTH Authentication required."), False),
    (ResponseError("ERR unknown command 'xautoclaim'"), False),
    (ResponseError("ERR wrong number of arguments for 'xadd' command"), False),
    (ValueError("a bug"), False),
])
def test_is_transient_table(exc: BaseException, transient: bool) -> None:
    """Outages are transient (retry with backoff); refusals and bugs are not."""
    assert is_transient(exc) is transient


def request(service: str, reply_to: str, n: int) -> dict[str, Any]:
    action = DomainAction(action_type=f"{service}.item.get", data={"n": n},
                          origin_service="caller", callback_queue_name=reply_to)
    return json.loads(action.model_dump_json(exclude_none=True))  # type: ignore[no-any-return]


async def test_wrongtype_reply_target_fails_alone(
    bus: Any, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply to a key of the wrong type is dead-lettered as undeliverable (original kept),
    the worker is marked unhealthy, and every other reply is written once and acknowledged."""
    caplog.set_level(logging.ERROR, "actionbus.worker")
    victim = QM.get_response_queue("victim", "str")
    good = QM.get_response_queue("caller", "good")
    await bus.redis.set(victim, "not a list")
    worker = bus.worker("inventory")
    worker.register("inventory.item.get", answer)
    await worker.start()
    bad_id = await xadd_raw(bus.redis, "inventory", request("inventory", victim, 0))
    for n in range(1, 6):
        await xadd_raw(bus.redis, "inventory", request("inventory", good, n))
    await eventually(lambda: drained(bus.redis, "inventory"), timeout=10)
    # Positive barrier: one more request answered means later rounds ran.
    await xadd_raw(bus.redis, "inventory", request("inventory", good, 99))
    await eventually(lambda: _len_is(bus.redis, good, 6), timeout=10)
    replies = [json.loads(r) for r in await bus.redis.lrange(good, 0, -1)]
    letters = await worker.dead_letters.list()
    print(f"good replies: {len(replies)} (want 6); dead letters: "
          f"{[(d.reason, d.original_id) for d in letters]}; health: {worker.health}")
    assert sorted(r["data"]["n"] for r in replies) == [1, 2, 3, 4, 5, 99]
    assert await bus.redis.get(victim) == b"not a list"
    assert [(d.reason, d.original_id) for d in letters] == [("undeliverable", bad_id)]
    assert json.loads(letters[0].data)["data"] == {"n": 0}  # the original request, whole
    health = worker.health
    assert not health.healthy
    assert sum(health.refused.values()) == 1
    assert sum("Redis refused" in r.message for r in caplog.records) == 1  # logged once


async def answer(action: DomainAction, data: Any) -> dict[str, Any]:
    return {"n": data["n"]}


async def _len_is(redis: Any, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n


async def test_an_undeliverable_dead_letter_names_the_workers_consumer(
    bus: Any, eventually: Any
) -> None:
    """A reply Redis refuses (WRONGTYPE target) is dead-lettered as undeliverable under
    the consumer name of the worker that handled it, with the entry's delivery count (its
    first delivery: 1)."""
    victim = QM.get_response_queue("victim", "str")
    await bus.redis.set(victim, "not a list")
    worker = bus.worker("inventory", consumer_name="worker-7")
    worker.register("inventory.item.get", answer)
    await worker.start()
    bad_id = await xadd_raw(bus.redis, "inventory", request("inventory", victim, 0))

    async def lettered() -> bool:
        return bool(await worker.dead_letters.list())

    await eventually(lettered, timeout=10)
    [letter] = await worker.dead_letters.list()
    assert (letter.reason, letter.original_id, letter.consumer, letter.deliveries) == (
        "undeliverable", bad_id, "worker-7", 1)


def _user_without(
    command: str, bus_url: str, backend: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The URL of an ACL user that may run everything except ``command`` (on every node of
    a cluster); the user is removed after the test."""
    name = f"no{command}-{uuid.uuid4().hex[:6]}"
    servers = (request.getfixturevalue("redis_cluster").nodes if backend == "cluster"
               else [request.getfixturevalue("redis_server")])
    for server in servers:
        with server.client() as admin:
            admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all",
                                  f"-{command}")
    try:
        yield bus_url.replace("redis://", f"redis://{name}:pw@", 1)
    finally:
        for server in servers:
            with server.client() as admin:
                admin.execute_command("ACL", "DELUSER", name)


@pytest.fixture
def no_lpush_user(bus_url: str, backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """An ACL user that may run everything except LPUSH."""
    yield from _user_without("lpush", bus_url, backend, request)


@pytest.fixture
def no_expire_user(bus_url: str, backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """An ACL user that may run everything except EXPIRE."""
    yield from _user_without("expire", bus_url, backend, request)


async def test_start_refuses_without_a_needed_permission(
    no_lpush_user: str, make_settings: Settings
) -> None:
    """start() raises PermissionsError naming each missing permission (here: lpush)."""
    worker = BaseWorker(make_settings(redis_url=no_lpush_user, service_name="inventory"),
                        worker_settings=fast_worker_settings())
    try:
        with pytest.raises(PermissionsError) as caught:
            await worker.start()
    finally:
        await worker.stop()
    print(f"missing: {caught.value.missing}")
    assert any(cmd == "lpush" for cmd, _ in caught.value.missing)


async def test_noperm_reply_is_not_an_outage(
    no_lpush_user: str, make_settings: Settings, redis_client: Any, eventually: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With check_permissions off, a refused LPUSH dead-letters that reply once, names the
    missing permission, marks the worker unhealthy and acknowledges the entry."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    worker = BaseWorker(make_settings(redis_url=no_lpush_user, service_name="inventory"),
                        worker_settings=fast_worker_settings(check_permissions=False))
    worker.register("inventory.item.get", answer)
    await worker.start()
    try:
        reply_to = QM.get_response_queue("caller", "x")
        for n in range(3):
            await xadd_raw(redis_client, "inventory", request("inventory", reply_to, n))
        await eventually(lambda: drained(redis_client, "inventory"), timeout=10)
        letters = await worker.dead_letters.list()
        print(f"dead letters: {len(letters)}; health: {worker.health}")
        assert [d.reason for d in letters] == ["undeliverable"] * 3
        assert not worker.health.healthy
        assert any("lpush" in p for p in worker.health.problems)
        assert not any("unavailable" in r.message for r in caplog.records)
        assert sum("lpush" in r.message and "Redis refused" in r.message
                   for r in caplog.records) == 1
    finally:
        await worker.stop()


async def test_stop_never_raises_a_client_error(make_settings: Settings) -> None:
    """stop() logs a failure to close its Redis connection instead of raising it."""
    worker = BaseWorker(make_settings(service_name="inventory"),
                        worker_settings=fast_worker_settings())
    await worker.start()
    manager = worker._manager
    assert manager is not None

    async def broken_close() -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    real_close = manager.close
    manager.close = broken_close  # type: ignore[method-assign]
    try:
        await worker.stop()  # must not raise
        assert worker._manager is None
    finally:
        await real_close()


async def test_failed_round_is_requeued_ahead_of_what_was_queued_meanwhile(
    fresh_redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A round Redis refuses transiently (OOM) goes back ahead of a unit queued while it was
    in flight; nothing is dropped: once Redis accepts writes, both outputs land and both
    entries are acknowledged. The outage log names the cause."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    redis = Redis.from_url(fresh_redis_server.url)
    stream, out = QM.get_service_action_stream("inventory"), "out-stream"
    try:
        await redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
        ids = [(await redis.xadd(stream, {"data": "{}"})).decode() for _ in range(2)]
        await redis.xreadgroup("inventory", "c1", {stream: ">"})
        batcher = OutputBatcher(redis, stream, "inventory",
                                OutageLog(logging.getLogger("actionbus.worker"), "output"),
                                consumer="c1")
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", 1)
        batcher.xadd(out, {"n": "a"})
        batcher.ack(ids[0])
        first = asyncio.create_task(batcher.flush())
        await asyncio.sleep(0)  # the round of unit a is in flight
        batcher.xadd(out, {"n": "b"})
        batcher.ack(ids[1])
        await first
        assert batcher.acknowledged == 0
        assert batcher.unacknowledged() == set(ids)
        await redis.config_set("maxmemory", 0)
        await batcher.flush()
        assert [f[b"n"] for _, f in await redis.xrange(out)] == [b"a", b"b"]
        assert batcher.acknowledged == 2
        assert (await redis.xpending(stream, "inventory"))["pending"] == 0
        assert any("Redis unavailable (OutOfMemoryError" in r.getMessage()
                   for r in caplog.records)
    finally:
        await redis.aclose()


async def test_a_flush_that_lands_ends_the_output_outage(fresh_redis_server: Any) -> None:
    """A round refused by an outage (OOM) marks the output in outage; the next flush() that
    lands its round ends it, with no background round needed (an idle worker's health
    would otherwise report the outage for good)."""
    redis = Redis.from_url(fresh_redis_server.url)
    stream = QM.get_service_action_stream("inventory")
    outage = OutageLog(logging.getLogger("actionbus.worker"), "output")
    try:
        batcher = await _output_in_oom_outage(redis, stream, outage)
        await redis.config_set("maxmemory", 0)
        await batcher.flush()
        assert batcher.acknowledged == 1
        assert not outage.in_outage
    finally:
        await redis.aclose()


async def test_a_background_round_that_lands_ends_the_output_outage(
    fresh_redis_server: Any, eventually: Any
) -> None:
    """After a round refused by an outage (OOM), the background loop's retry that lands
    ends the output outage by itself: no later flush() is needed for health to clear."""
    redis = Redis.from_url(fresh_redis_server.url)
    stream = QM.get_service_action_stream("inventory")
    outage = OutageLog(logging.getLogger("actionbus.worker"), "output")
    loop: asyncio.Task[None] | None = None
    try:
        batcher = await _output_in_oom_outage(redis, stream, outage)
        loop = asyncio.create_task(batcher.run())
        await redis.config_set("maxmemory", 0)
        await eventually(lambda: not outage.in_outage, timeout=10)
        assert batcher.acknowledged == 1
    finally:
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await redis.aclose()


async def _output_in_oom_outage(redis: Redis, stream: str, outage: OutageLog) -> OutputBatcher:
    """A batcher whose round (one output, one ack) Redis refused at maxmemory 1: the output
    is in outage, and maxmemory stays at 1 until the test lifts it."""
    ids = await _one_read(redis, stream, 1)
    batcher = OutputBatcher(redis, stream, "inventory", outage, consumer="c1")
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)
    batcher.xadd("out-stream", {"n": "a"})
    batcher.ack(ids[0])
    await batcher.flush()
    assert outage.in_outage
    return batcher


async def _one_read(redis: Redis, stream: str, n: int) -> list[str]:
    """``n`` entries added to ``stream`` and read by consumer c1 of group inventory."""
    await redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    ids = [(await redis.xadd(stream, {"data": "{}"})).decode() for _ in range(n)]
    await redis.xreadgroup("inventory", "c1", {stream: ">"})
    return ids


async def test_plain_acks_survive_an_outage(fresh_redis_server_aof: Any) -> None:
    """Acknowledgements of entries that queued no write, refused by an outage, stay queued
    (counted, reported unacknowledged) and are sent once Redis is back."""
    server = fresh_redis_server_aof
    redis = Redis.from_url(server.url)
    stream = QM.get_service_action_stream("inventory")
    try:
        ids = await _one_read(redis, stream, 2)
        batcher = OutputBatcher(redis, stream, "inventory",
                                OutageLog(logging.getLogger("actionbus.worker"), "output"))
        for entry_id in ids:
            batcher.ack(entry_id)
        assert (batcher.queued, batcher.unacknowledged()) == (2, set(ids))
        server.stop()
        await batcher.flush()
        assert (batcher.acknowledged, batcher.queued) == (0, 2)
        assert batcher.unacknowledged() == set(ids)
        server.start()
        await batcher.flush()
        assert (batcher.acknowledged, batcher.queued) == (2, 0)
        assert (await redis.xpending(stream, "inventory"))["pending"] == 0
    finally:
        await redis.aclose()



async def test_plain_acks_in_flight_are_reported_unacknowledged(redis_server: Any) -> None:
    """While a round's XACK is in flight, its plain acks still count as unacknowledged
    (recovery must not take those entries back meanwhile)."""
    redis = Redis.from_url(redis_server.url)
    stream = f"in-flight-{uuid.uuid4().hex}"
    try:
        ids = await _one_read(redis, stream, 2)
        batcher = OutputBatcher(redis, stream, "inventory",
                                OutageLog(logging.getLogger("actionbus.worker"), "output"))
        for entry_id in ids:
            batcher.ack(entry_id)
        round_ = asyncio.create_task(batcher.flush())
        await asyncio.sleep(0)  # the round took the acks; its XACK is in flight
        assert batcher.queued == 0
        assert batcher.unacknowledged() == set(ids)
        await round_
        assert (batcher.acknowledged, batcher.unacknowledged()) == (2, set())
    finally:
        await redis.aclose()


async def _refused_reply_round(
    redis: Any, service: str, consumer: str, *, delete_original: bool = False
) -> tuple[OutputBatcher, str, str]:
    """An entry read by consumer c1 of ``service``'s group, answered by a reply Redis
    refuses (WRONGTYPE), flushed by a batcher with consumer name ``consumer``; the original
    entry deleted first if ``delete_original``. Returns the batcher, stream and entry id."""
    stream, dead = QM.get_service_action_stream(service), QM.get_dead_letter_stream(service)
    victim = QM.get_response_queue("victim", f"{service}-str")
    await redis.set(victim, "not a list")
    await redis.xgroup_create(stream, service, id="0", mkstream=True)
    entry_id = (await redis.xadd(stream, {"data": '{"n": 1}'})).decode()
    await redis.xreadgroup(service, "c1", {stream: ">"})
    if delete_original:
        await redis.xdel(stream, entry_id)
    batcher = OutputBatcher(redis, stream, service,
                            OutageLog(logging.getLogger("actionbus.worker"), "output"),
                            dead_stream=dead, consumer=consumer)
    batcher.reply(victim, '{"success": true}', 60)
    batcher.ack(entry_id)
    await batcher.flush()
    return batcher, stream, entry_id


@pytest.mark.parametrize(("consumer", "consumers"), [
    ("c1", {"c1"}),
    ("", {"c1", "actionbus"}),
])
async def test_undeliverable_output_reads_the_original_as_the_batchers_own_consumer(
    redis_client: Any, consumer: str, consumers: set[str]
) -> None:
    """Dead-lettering an entry whose reply Redis refused reads the original request back by
    XCLAIM under the batcher's own consumer name ("actionbus" for a batcher given none): the
    letter keeps the request and no other consumer appears in the group."""
    service = f"outc{len(consumer)}"
    batcher, stream, entry_id = await _refused_reply_round(redis_client, service, consumer)
    letters = await redis_client.xrange(QM.get_dead_letter_stream(service))
    assert [(f[b"original_id"], f[b"data"]) for _, f in letters] == [
        (entry_id.encode(), b'{"n": 1}')]
    assert batcher.undeliverable == 1
    assert (await redis_client.xpending(stream, service))["pending"] == 0
    info = await redis_client.xinfo_consumers(stream, service)
    assert {c["name"].decode() for c in info} == consumers


async def test_undeliverable_output_of_an_entry_deleted_meanwhile_is_still_dead_lettered(
    redis_client: Any,
) -> None:
    """The original entry deleted (trimmed) while it was handled: its refused reply is still
    dead-lettered, with empty data, and the entry is acknowledged."""
    batcher, stream, entry_id = await _refused_reply_round(
        redis_client, "outgone", "c1", delete_original=True)
    letters = await redis_client.xrange(QM.get_dead_letter_stream("outgone"))
    assert [(f[b"original_id"], f[b"data"]) for _, f in letters] == [(entry_id.encode(), b"")]
    assert batcher.undeliverable == 1
    assert batcher.acknowledged == 1
    assert (await redis_client.xpending(stream, "outgone"))["pending"] == 0


async def test_callers_waiting_while_a_reply_is_queued_and_no_round_runs(
    redis_client: Any,
) -> None:
    """callers_waiting() is true exactly while a reply to a waiting caller is queued and no
    round is under way: not for an empty batcher or plain writes, not during the round that
    sends the reply, not after it."""
    stream = QM.get_service_action_stream("waiters")
    batcher = OutputBatcher(redis_client, stream, "waiters",
                            OutageLog(logging.getLogger("actionbus.worker"), "output"),
                            consumer="c1")
    assert batcher.callers_waiting() is False
    batcher.xadd(QM.get_service_action_stream("elsewhere"), {"data": "{}"})
    assert batcher.callers_waiting() is False
    queue = QM.get_response_queue("caller", "w1")
    batcher.reply(queue, '{"success": true}', 60)
    assert batcher.callers_waiting() is True
    round_ = asyncio.create_task(batcher.flush())
    await asyncio.sleep(0)  # the round is under way
    assert batcher.callers_waiting() is False
    await round_
    assert batcher.callers_waiting() is False
    assert await redis_client.llen(queue) == 1


async def test_a_flush_during_a_round_leaves_what_it_finds_to_that_round(
    redis_client: Any,
) -> None:
    """flush() while a round is under way returns at once without sending (one round at a
    time); the round under way then sends what was queued meanwhile too, before it ends."""
    stream = QM.get_service_action_stream("rounds")
    batcher = OutputBatcher(redis_client, stream, "rounds",
                            OutageLog(logging.getLogger("actionbus.worker"), "output"),
                            consumer="c1")
    queue = QM.get_response_queue("caller", "rounds")
    batcher.reply(queue, "1", 60)
    round_ = asyncio.create_task(batcher.flush())
    await asyncio.sleep(0)  # the round is under way
    batcher.reply(queue, "2", 60)
    await batcher.flush()
    assert batcher.queued == 1
    await asyncio.wait_for(round_, 10)
    assert batcher.queued == 0
    assert await redis_client.lrange(queue, 0, -1) == [b"2", b"1"]


async def test_a_refused_callback_is_dead_lettered_a_refused_dead_letter_is_dropped(
    redis_client: Any,
) -> None:
    """An XADD Redis refuses (WRONGTYPE) is dead-lettered as undeliverable when it is an
    action's output (a callback), but dropped, with the entry acknowledged, when it is
    itself a dead letter: no dead letter of a dead letter."""
    for service, target_is_dead_stream in (("cbout", False), ("dlout", True)):
        stream, dead = QM.get_service_action_stream(service), QM.get_dead_letter_stream(service)
        victim = dead if target_is_dead_stream else QM.get_service_action_stream(f"{service}-x")
        await redis_client.set(victim, "not a stream")
        await redis_client.xgroup_create(stream, service, id="0", mkstream=True)
        entry_id = (await redis_client.xadd(stream, {"data": '{"n": 1}'})).decode()
        await redis_client.xreadgroup(service, "c1", {stream: ">"})
        batcher = OutputBatcher(redis_client, stream, service,
                                OutageLog(logging.getLogger("actionbus.worker"), "output"),
                                dead_stream=dead, consumer="c1")
        batcher.xadd(victim, {"data": "{}"})
        batcher.ack(entry_id)
        await asyncio.wait_for(batcher.flush(), 10)
        assert (await redis_client.xpending(stream, service))["pending"] == 0
        if target_is_dead_stream:
            assert batcher.undeliverable == 0
            assert await redis_client.get(dead) == b"not a stream"
        else:
            assert batcher.undeliverable == 1
            [(_, letter)] = await redis_client.xrange(dead)
            assert (letter[b"reason"], letter[b"original_id"]) == (
                b"undeliverable", entry_id.encode())


async def test_a_refused_expire_leaves_its_pushed_reply_delivered(
    no_expire_user: str, backend: str, redis_client: Any,
) -> None:
    """Redis refuses the EXPIRE of a reply list (NOPERM) after its LPUSH went through: the
    reply counts as delivered (pushed once, not dead-lettered, the entry acknowledged) and
    the refusal is recorded as the EXPIRE's."""
    stream, dead = QM.get_service_action_stream("exp"), QM.get_dead_letter_stream("exp")
    queue = QM.get_response_queue("caller", "exp")
    await redis_client.xgroup_create(stream, "exp", id="0", mkstream=True)
    entry_id = (await redis_client.xadd(stream, {"data": '{"n": 1}'})).decode()
    await redis_client.xreadgroup("exp", "c1", {stream: ">"})
    user: Redis | RedisCluster = (RedisCluster.from_url(no_expire_user) if backend == "cluster"
                                  else Redis.from_url(no_expire_user))
    try:
        batcher = OutputBatcher(user, stream, "exp",
                                OutageLog(logging.getLogger("actionbus.worker"), "output"),
                                dead_stream=dead, consumer="c1")
        batcher.reply(queue, '{"success": true}', 60)
        batcher.ack(entry_id)
        await asyncio.wait_for(batcher.flush(), 10)
    finally:
        await user.aclose()
    print(f"health: {batcher.health}")
    assert await redis_client.lrange(queue, 0, -1) == [b'{"success": true}']
    assert await redis_client.ttl(queue) == -1  # the EXPIRE really was refused
    assert batcher.undeliverable == 0
    assert await redis_client.xlen(dead) == 0
    assert (await redis_client.xpending(stream, "exp"))["pending"] == 0
    assert [key.split(":")[0] for key in batcher.health.refusals] == ["EXPIRE"]


async def test_a_refused_expire_does_not_hide_a_refused_reply_after_it(
    no_expire_user: str, backend: str, redis_client: Any,
) -> None:
    """In one round, entry A's reply is pushed but its EXPIRE refused (NOPERM), and entry
    B's reply is refused (its list name holds a string: WRONGTYPE): B is still
    dead-lettered as undeliverable, A is not, and both are acknowledged."""
    stream, dead = QM.get_service_action_stream("exp2"), QM.get_dead_letter_stream("exp2")
    first_queue, second_queue = (QM.get_response_queue("caller", "exp2a"),
                                 QM.get_response_queue("caller", "exp2b"))
    await redis_client.set(second_queue, "not a list")
    await redis_client.xgroup_create(stream, "exp2", id="0", mkstream=True)
    first = (await redis_client.xadd(stream, {"data": '{"n": 1}'})).decode()
    second = (await redis_client.xadd(stream, {"data": '{"n": 2}'})).decode()
    await redis_client.xreadgroup("exp2", "c1", {stream: ">"})
    user: Redis | RedisCluster = (RedisCluster.from_url(no_expire_user) if backend == "cluster"
                                  else Redis.from_url(no_expire_user))
    try:
        batcher = OutputBatcher(user, stream, "exp2",
                                OutageLog(logging.getLogger("actionbus.worker"), "output"),
                                dead_stream=dead, consumer="c1")
        batcher.reply(first_queue, '{"n": 1}', 60)
        batcher.ack(first)
        batcher.reply(second_queue, '{"n": 2}', 60)
        batcher.ack(second)
        await asyncio.wait_for(batcher.flush(), 10)
    finally:
        await user.aclose()
    assert await redis_client.lrange(first_queue, 0, -1) == [b'{"n": 1}']
    assert batcher.undeliverable == 1
    [(_, letter)] = await redis_client.xrange(dead)
    assert (letter[b"original_id"], letter[b"undelivered"]) == (second.encode(), b'{"n": 2}')
    assert (await redis_client.xpending(stream, "exp2"))["pending"] == 0


async def test_a_refused_write_after_a_landed_one_of_the_same_entry_is_dead_lettered(
    redis_client: Any,
) -> None:
    """An entry whose first write lands and whose second is refused (WRONGTYPE) is
    dead-lettered as undeliverable naming the second, and its first write is not sent again."""
    stream, dead = QM.get_service_action_stream("two"), QM.get_dead_letter_stream("two")
    good, victim = (QM.get_service_action_stream("two-ok"),
                    QM.get_service_action_stream("two-x"))
    await redis_client.set(victim, "not a stream")
    await redis_client.xgroup_create(stream, "two", id="0", mkstream=True)
    entry_id = (await redis_client.xadd(stream, {"data": '{"n": 1}'})).decode()
    await redis_client.xreadgroup("two", "c1", {stream: ">"})
    batcher = OutputBatcher(redis_client, stream, "two",
                            OutageLog(logging.getLogger("actionbus.worker"), "output"),
                            dead_stream=dead, consumer="c1")
    batcher.xadd(good, {"data": "{}"})
    batcher.xadd(victim, {"data": "{}"})
    batcher.ack(entry_id)
    await asyncio.wait_for(batcher.flush(), 10)
    assert batcher.undeliverable == 1
    [(_, letter)] = await redis_client.xrange(dead)
    assert (letter[b"reason"], letter[b"original_id"]) == (b"undeliverable", entry_id.encode())
    assert victim.encode() in letter[b"error_message"]
    assert await redis_client.xlen(good) == 1
    assert (await redis_client.xpending(stream, "two"))["pending"] == 0


@pytest.mark.standalone_only("fills the memory of a server of its own")
async def test_an_entry_with_a_refused_and_a_transiently_failed_write_is_dead_lettered_once(
    fresh_redis_server: Any,
) -> None:
    """One entry's output: a reply Redis refuses (NOPERM) and a callback it refuses for
    now (OOM). The entry waits for the callback's retry, then is dead-lettered once for the
    refused reply; the callback lands once and the entry is acknowledged."""
    admin = Redis.from_url(fresh_redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "nolpush", "on", ">pw", "~*", "&*", "+@all",
                                "-lpush")
    user = Redis.from_url(fresh_redis_server.url.replace("redis://", "redis://nolpush:pw@", 1))
    stream, dead = QM.get_service_action_stream("mixed"), QM.get_dead_letter_stream("mixed")
    callback = QM.get_service_action_stream("mixed-cb")
    try:
        await admin.xgroup_create(stream, "mixed", id="0", mkstream=True)
        entry_id = (await admin.xadd(stream, {"data": '{"n": 1}'})).decode()
        await admin.xreadgroup("mixed", "c1", {stream: ">"})
        batcher = OutputBatcher(user, stream, "mixed",
                                OutageLog(logging.getLogger("actionbus.worker"), "output"),
                                dead_stream=dead, consumer="c1")
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)  # every write that may grow memory: OOM
        batcher.reply(QM.get_response_queue("caller", "x"), '{"success": true}', 60)
        batcher.xadd(callback, {"data": "{}"})
        batcher.ack(entry_id)
        await asyncio.wait_for(batcher.flush(), 10)
        assert batcher.unacknowledged() == {entry_id}  # the callback waits for its retry
        assert await admin.exists(dead) == 0
        await admin.config_set("maxmemory", 0)  # memory available again
        await asyncio.wait_for(batcher.flush(), 10)
        letters = await admin.xrange(dead)
        assert [(f[b"reason"], f[b"original_id"]) for _, f in letters] == [
            (b"undeliverable", entry_id.encode())]
        assert b"LPUSH" in letters[0][1][b"error_message"]
        assert await admin.xlen(callback) == 1
        assert batcher.undeliverable == 1
        assert (await admin.xpending(stream, "mixed"))["pending"] == 0
    finally:
        await user.aclose()
        await admin.aclose()


async def _delivered_entry_and_batcher(redis: Any) -> tuple[str, str, OutputBatcher]:
    """The inventory stream, an entry of it delivered to consumer c1, and c1's batcher."""
    stream = QM.get_service_action_stream("inventory")
    await redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    entry_id = (await redis.xadd(stream, {"data": "{}"})).decode()
    await redis.xreadgroup("inventory", "c1", {stream: ">"})
    batcher = OutputBatcher(redis, stream, "inventory",
                            OutageLog(logging.getLogger("actionbus.worker"), "output"),
                            consumer="c1")
    return stream, entry_id, batcher


@pytest.mark.standalone_only("pauses the one server (CLIENT PAUSE)")
async def test_a_round_cancelled_in_flight_puts_its_plain_acks_back(
    redis_client: Any, redis_server: Any,
) -> None:
    """A round cancelled while Redis holds it (the worker stopping during a stall) puts
    back the plain acknowledgements it carried, not only its units: the entry is still
    unacknowledged afterwards, and the next flush acknowledges it."""
    stream, entry_id, batcher = await _delivered_entry_and_batcher(redis_client)
    batcher.ack(entry_id)  # nothing to send with it: a plain acknowledgement
    with redis_server.client() as admin:
        admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # the XACK waits in Redis
        try:
            round_ = asyncio.create_task(batcher.flush())
            await asyncio.sleep(0.2)
            assert not round_.done()
            round_.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await round_
            assert batcher.unacknowledged() == {entry_id}
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
    await batcher.flush()
    assert batcher.unacknowledged() == set()
    assert (await redis_client.xpending(stream, "inventory"))["pending"] == 0


@pytest.mark.standalone_only("pauses the one server (CLIENT PAUSE)")
async def test_a_cancelled_round_keeps_the_acks_queued_while_it_was_held(
    redis_client: Any, redis_server: Any,
) -> None:
    """A round cancelled while Redis holds it puts its plain acknowledgement back ahead of
    one queued meanwhile, losing neither: both entries are unacknowledged afterwards and
    the next flush acknowledges both."""
    stream, first, batcher = await _delivered_entry_and_batcher(redis_client)
    second = (await redis_client.xadd(stream, {"data": "{}"})).decode()
    await redis_client.xreadgroup("inventory", "c1", {stream: ">"})
    batcher.ack(first)
    with redis_server.client() as admin:
        admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # the XACK waits in Redis
        try:
            round_ = asyncio.create_task(batcher.flush())
            await asyncio.sleep(0.2)
            assert not round_.done()
            batcher.ack(second)  # queued while the round is held
            round_.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await round_
            assert batcher.unacknowledged() == {first, second}
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
    await batcher.flush()
    assert batcher.acknowledged == 2
    assert (await redis_client.xpending(stream, "inventory"))["pending"] == 0


@pytest.mark.standalone_only("pauses the one server (CLIENT PAUSE)")
async def test_the_output_loop_goes_on_when_it_wakes_during_a_flush(
    redis_client: Any, redis_server: Any,
) -> None:
    """The background output loop waking for its 1 s sweep while a flush() round is held in
    Redis leaves that round alone and keeps running (it does not end, which would leave
    failed rounds without a retry); the round then completes."""
    _, entry_id, batcher = await _delivered_entry_and_batcher(redis_client)
    loop = asyncio.create_task(batcher.run())
    try:
        batcher.ack(entry_id)
        with redis_server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
            try:
                round_ = asyncio.create_task(batcher.flush())
                await asyncio.sleep(2.2)  # the loop's sweep came (twice) during the round
                assert not round_.done()
                assert not loop.done()
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
        await asyncio.wait_for(round_, 10)
        assert batcher.unacknowledged() == set()
        assert not loop.done()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
