"""Dead letters of entries whose output Redis refused (``undeliverable``): what they keep."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster

from actionbus.backoff import OutageLog
from actionbus.workers.output import OutputBatcher
from tests.workers.helpers import QM

pytestmark = pytest.mark.backends


async def _pending_entry(redis: Any, service: str, fields: dict[str, str]) -> str:
    """An entry of ``service``'s stream, delivered to consumer c1 of its group."""
    stream = QM.get_service_action_stream(service)
    await redis.xgroup_create(stream, service, id="0", mkstream=True)
    entry_id = (await redis.xadd(stream, fields)).decode()
    await redis.xreadgroup(service, "c1", {stream: ">"})
    return str(entry_id)


def _batcher(redis: Any, service: str) -> OutputBatcher:
    return OutputBatcher(redis, QM.get_service_action_stream(service), service,
                         OutageLog(logging.getLogger("actionbus.worker"), "output"),
                         dead_stream=QM.get_dead_letter_stream(service), consumer="c1")


async def _refused_stream(redis: Any, name: str) -> str:
    """A stream name that holds a string: an XADD to it is refused (WRONGTYPE)."""
    key = QM.get_service_action_stream(name)
    await redis.set(key, "not a stream")
    return key


async def test_an_undeliverable_letter_keeps_the_whole_request_and_names_each_refusal(
    redis_client: Any,
) -> None:
    """An entry with two refused callbacks: its letter keeps ``data`` and every other
    field of the request (``field.<name>``), names the refused error's class, and lists
    both refusals in ``error_message``, separated by "; "."""
    entry_id = await _pending_entry(redis_client, "keep", {
        "data": '{"n": 1}', "traceparent": "00-abc-01", "origin": "go"})
    first, second = (await _refused_stream(redis_client, "keep-a"),
                     await _refused_stream(redis_client, "keep-b"))
    batcher = _batcher(redis_client, "keep")
    batcher.xadd(first, {"data": "{}"})
    batcher.xadd(second, {"data": "{}"})
    batcher.ack(entry_id)
    await asyncio.wait_for(batcher.flush(), 10)
    [(_, letter)] = await redis_client.xrange(QM.get_dead_letter_stream("keep"))
    print(f"letter: {letter}")
    assert (letter[b"reason"], letter[b"data"]) == (b"undeliverable", b'{"n": 1}')
    assert (letter[b"field.traceparent"], letter[b"field.origin"]) == (b"00-abc-01", b"go")
    assert b"data_missing" not in letter
    assert letter[b"error_type"] == b"ResponseError"
    first_part, second_part = letter[b"error_message"].decode().split("; ")
    assert first_part.startswith(f"XADD {first}: ")
    assert second_part.startswith(f"XADD {second}: ")


async def test_an_undeliverable_letter_of_an_entry_gone_says_its_data_is_missing(
    redis_client: Any,
) -> None:
    """The request was deleted before its refused output was dead-lettered: the letter
    says so (``data_missing: true``, empty ``data``) instead of passing for an empty
    request."""
    entry_id = await _pending_entry(redis_client, "gone", {"data": '{"n": 1}'})
    await redis_client.xdel(QM.get_service_action_stream("gone"), entry_id)
    batcher = _batcher(redis_client, "gone")
    batcher.xadd(await _refused_stream(redis_client, "gone-x"), {"data": "{}"})
    batcher.ack(entry_id)
    await asyncio.wait_for(batcher.flush(), 10)
    [(_, letter)] = await redis_client.xrange(QM.get_dead_letter_stream("gone"))
    assert (letter[b"original_id"], letter[b"data"], letter[b"data_missing"]) == (
        entry_id.encode(), b"", b"true")


async def test_an_undeliverable_letter_on_a_decoding_client_keeps_the_request(
    bus_url: str, backend: str, redis_client: Any,
) -> None:
    """A batcher on a client that decodes replies (``redis_decode_responses=True``) reads
    the request's fields as text and still keeps its ``data`` in the letter."""
    entry_id = await _pending_entry(redis_client, "text", {"data": '{"n": 7}'})
    victim = await _refused_stream(redis_client, "text-x")
    decoding: Redis | RedisCluster = (
        RedisCluster.from_url(bus_url, decode_responses=True) if backend == "cluster"
        else Redis.from_url(bus_url, decode_responses=True))
    try:
        batcher = _batcher(decoding, "text")
        batcher.xadd(victim, {"data": "{}"})
        batcher.ack(entry_id)
        await asyncio.wait_for(batcher.flush(), 10)
    finally:
        await decoding.aclose()
    [(_, letter)] = await redis_client.xrange(QM.get_dead_letter_stream("text"))
    assert (letter[b"reason"], letter[b"data"]) == (b"undeliverable", b'{"n": 7}')
    assert b"data_missing" not in letter


async def test_a_refused_dead_letter_does_not_keep_the_next_entry_from_its_own(
    redis_client: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """In one round, entry A's own dead letter is refused (dropped, logged) and entry B's
    callback is refused: B is still dead-lettered (the attempt counted; its letter, to
    the same refused stream, is dropped and logged in turn), and both are acknowledged."""
    caplog.set_level(logging.ERROR, "actionbus.worker")
    service = "chain"
    stream, dead = QM.get_service_action_stream(service), QM.get_dead_letter_stream(service)
    first = await _pending_entry(redis_client, service, {"data": '{"n": 1}'})
    second = (await redis_client.xadd(stream, {"data": '{"n": 2}'})).decode()
    await redis_client.xreadgroup(service, "c1", {stream: ">"})
    await redis_client.set(dead, "not a stream")
    batcher = _batcher(redis_client, service)
    batcher.xadd(dead, {"data": "{}", "reason": "rejected"})
    batcher.ack(first)
    batcher.xadd(await _refused_stream(redis_client, "chain-x"), {"data": "{}"})
    batcher.ack(second)
    await asyncio.wait_for(batcher.flush(), 10)
    assert batcher.undeliverable == 1
    dropped = [r.getMessage() for r in caplog.records if "was refused by Redis" in r.getMessage()]
    assert dropped == [f"the dead letter for {first} was refused by Redis; dropped",
                       f"the dead letter for {second} was refused by Redis; dropped"]
    assert (await redis_client.xpending(stream, service))["pending"] == 0


async def test_undeliverable_letters_are_counted_and_carry_each_entrys_deliveries(
    redis_client: Any,
) -> None:
    """Two entries whose callbacks Redis refuses, acknowledged as their 3rd and 1st
    delivery: two letters, each with its entry's delivery count, and the batcher counts
    both."""
    service = "count"
    stream = QM.get_service_action_stream(service)
    first = await _pending_entry(redis_client, service, {"data": '{"n": 1}'})
    second = (await redis_client.xadd(stream, {"data": '{"n": 2}'})).decode()
    await redis_client.xreadgroup(service, "c1", {stream: ">"})
    victim = await _refused_stream(redis_client, "count-x")
    batcher = _batcher(redis_client, service)
    batcher.xadd(victim, {"data": "{}"})
    batcher.ack(first, 3)
    batcher.xadd(victim, {"data": "{}"})
    batcher.ack(second, 1)
    await asyncio.wait_for(batcher.flush(), 10)
    letters = await redis_client.xrange(QM.get_dead_letter_stream(service))
    assert [(f[b"original_id"], f[b"deliveries"]) for _, f in letters] == [
        (first.encode(), b"3"), (second.encode(), b"1")]
    assert batcher.undeliverable == 2


@pytest.mark.standalone_only("stops and restarts a server of its own")
async def test_redis_gone_while_a_letter_is_written_delays_the_letter_not_loses_it(
    fresh_redis_server_aof: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis goes away right after a round in which an entry's callback was refused,
    before the request is read back for its dead letter: flush() does not raise, the
    output outage is logged with the connection error and the entry stays unacknowledged;
    once Redis is back, the next flush writes the letter, then acknowledges the entry,
    and the refusal is recorded once."""
    from actionbus.workers.health import Health

    server = fresh_redis_server_aof
    caplog.set_level(logging.WARNING, "actionbus.worker")
    redis = Redis.from_url(server.url)

    class GoneAfterRefusal(Health):
        def refused(self, operation: str, exc: BaseException) -> None:
            super().refused(operation, exc)
            server.stop()  # SIGTERM: the AOF keeps the entry and the group

    service = "gone2"
    try:
        entry_id = await _pending_entry(redis, service, {"data": '{"n": 1}'})
        victim = await _refused_stream(redis, "gone2-x")
        health = GoneAfterRefusal(logging.getLogger("actionbus.worker"), "output")
        batcher = OutputBatcher(
            redis, QM.get_service_action_stream(service), service,
            OutageLog(logging.getLogger("actionbus.worker"), "output"),
            dead_stream=QM.get_dead_letter_stream(service), consumer="c1", health=health)
        batcher.xadd(victim, {"data": "{}"})
        batcher.ack(entry_id)
        await asyncio.wait_for(batcher.flush(), 30)
        assert batcher.unacknowledged() == {entry_id}
        assert any("output: Redis unavailable (ConnectionError" in r.getMessage()
                   for r in caplog.records)
        server.restart()
        await asyncio.wait_for(batcher.flush(), 30)
        assert batcher.unacknowledged() == set()
        [(_, letter)] = await redis.xrange(QM.get_dead_letter_stream(service))
        assert (letter[b"reason"], letter[b"original_id"], letter[b"data"]) == (
            b"undeliverable", entry_id.encode(), b'{"n": 1}')
        assert (await redis.xpending(QM.get_service_action_stream(service), service))[
            "pending"] == 0
        assert sum(health.refusals.values()) == 1
    finally:
        await redis.aclose()


async def test_a_refused_error_reply_is_dead_lettered_with_the_entrys_delivery(
    bus: Any, eventually: Any,
) -> None:
    """A waiting caller's request whose handler fails, on its first delivery, and whose
    error reply Redis refuses (the reply list's key holds a string): the undeliverable
    letter carries deliveries 1, the entry's own count."""
    from actionbus import DomainAction

    worker = bus.worker("inventory")

    @worker.handler("inventory.item.fail")
    async def fail(action: DomainAction, data: Any) -> None:
        raise RuntimeError("handler failed")

    client = bus.client("orders")
    await bus.redis.set(client.response_queue, "not a list")
    await worker.start()
    await client.send_action_async(DomainAction(
        action_type="inventory.item.fail", callback_queue_name=client.response_queue))
    dead = QM.get_dead_letter_stream("inventory")
    [(_, letter)] = await eventually(lambda: bus.redis.xrange(dead))
    assert (letter[b"reason"], letter[b"deliveries"]) == (b"undeliverable", b"1")


async def test_a_refused_failure_callback_is_dead_lettered_with_the_entrys_delivery(
    bus: Any, eventually: Any,
) -> None:
    """An action with a callback whose handler rejects it, on its first delivery: it is
    buried (rejected) and its failure callback, which Redis refuses (the caller's stream
    key holds a string), makes an undeliverable letter carrying deliveries 1 too."""
    from actionbus import DomainAction
    from actionbus.exceptions import ActionRejected

    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reject")
    async def reject(action: DomainAction, data: Any) -> None:
        raise ActionRejected("never valid")

    client = bus.client("orders")
    await worker.start()
    await bus.redis.set(QM.get_service_action_stream("orders"), "not a stream")
    await client.send_action_async_with_callback(
        DomainAction(action_type="inventory.item.reject"), "orders.item.rejected")
    dead = QM.get_dead_letter_stream("inventory")
    letters = await eventually(
        lambda: _at_least_two(bus.redis.xrange(dead)))
    assert sorted((f[b"reason"], f[b"deliveries"]) for _, f in letters) == [
        (b"rejected", b"1"), (b"undeliverable", b"1")]


async def _at_least_two(letters: Any) -> Any:
    found = await letters
    return found if len(found) >= 2 else None


async def test_a_refused_replayed_reply_is_dead_lettered_with_the_entrys_delivery(
    bus: Any, eventually: Any,
) -> None:
    """A duplicate of an idempotent request (same action_id) whose caller waits on a reply
    list Redis refuses (its key holds a string): the stored reply replayed to it is
    undeliverable, and its letter carries the duplicate's delivery count, 1."""
    from actionbus import DomainAction

    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve", idempotent=True)
    async def reserve(action: DomainAction, data: Any) -> dict[str, Any]:
        return {"reserved": True}

    client = bus.client("orders")
    await worker.start()
    first = DomainAction(action_type="inventory.item.reserve",
                         callback_queue_name=QM.get_response_queue("orders", "r1"))
    await client.send_action_async(first)
    await eventually(lambda: bus.redis.llen(first.callback_queue_name))
    refused = QM.get_response_queue("orders", "r2")
    await bus.redis.set(refused, "not a list")
    await client.send_action_async(first.model_copy(update={"callback_queue_name": refused}))
    dead = QM.get_dead_letter_stream("inventory")
    [(_, letter)] = await eventually(lambda: bus.redis.xrange(dead))
    assert (letter[b"reason"], letter[b"deliveries"]) == (b"undeliverable", b"1")
