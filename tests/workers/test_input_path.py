"""The worker's input path (issues 17, 14, 13): whatever an entry holds, it is handled or
buried with its reason, and the worker keeps going."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from actionbus import (
    ActionRejected,
    BaseWorker,
    CommonAppSettings,
    ConfigurationError,
    DeadLetterError,
    DomainAction,
    DomainActionResponse,
)
from actionbus.models.actions import format_timestamp, utc_now
from actionbus.workers.ownership import ConsumerLease, lease_key
from tests.conftest import fast_worker_settings
from tests.workers.helpers import QM, dead_letters_of, drained, noop, xadd_raw

pytestmark = pytest.mark.backends

STREAM = QM.get_service_action_stream("inventory")


async def _pop_reply(redis: Any, queue: str) -> DomainActionResponse:
    popped = await redis.brpop([queue], timeout=5)
    assert popped is not None, f"no reply on {queue}"
    return DomainActionResponse.model_validate_json(popped[1])


def _record_marks(worker: BaseWorker) -> list[str]:
    """Register an inventory.item.mark handler on ``worker``; the list it records data['m'] in."""
    marks: list[str] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        marks.append(data["m"])

    return marks


def _marker_worker(bus: Any, **settings: Any) -> tuple[BaseWorker, list[str]]:
    """An inventory worker whose inventory.item.mark handler records data['m']."""
    worker = bus.worker("inventory", **settings)
    return worker, _record_marks(worker)


@pytest.mark.parametrize(("field", "value"), [
    ("expires_at", "9999-12-31T23:59:59-14:00"),
    ("timestamp", "0001-01-01T00:00:00+14:00"),
])
async def test_timestamp_overflow_is_buried_not_retried_forever(
    bus: Any, eventually: Any, field: str, value: str
) -> None:
    """A timestamp whose UTC conversion overflows is dead-lettered at once as malformed,
    the letter saying which error and what it said."""
    worker, marks = _marker_worker(bus)
    await worker.start()
    bad = await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.mark",
                                                  "data": {"m": "bad"}, field: value})
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.mark",
                                            "data": {"m": "after"}})
    await eventually(lambda: marks == ["after"])
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.original_id, letter.reason, letter.error_type) == (
        bad, "malformed", "InvalidAction")
    assert letter.error_message.startswith("OverflowError: ")
    assert "out of range" in letter.error_message  # what Python said, not only the type
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_delivery_cap_applies_before_decoding(bus: Any, eventually: Any) -> None:
    """An entry delivered more than max_deliveries times is buried as such, even undecodable."""
    worker = bus.worker("inventory", max_deliveries=2, claim_idle_ms=100,
                        reclaim_interval_s=0.05)
    await bus.redis.xgroup_create(STREAM, "inventory", id="0", mkstream=True)
    entry = await xadd_raw(bus.redis, "inventory", "{not json")
    await bus.redis.xreadgroup("inventory", "crashed", {STREAM: ">"}, count=1)
    await bus.redis.xclaim(STREAM, "inventory", "crashed", 0, [entry], retrycount=5)
    await worker.start()
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.reason, letter.error_type) == ("max_deliveries", "Abandoned")
    assert letter.data == "{not json"


class _Hostile(Exception):
    """An exception whose every attribute fights back."""

    def __init__(self, code: Any) -> None:
        super().__init__("x")
        self.error_code = code

    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


class _Huge(ActionRejected):
    def __init__(self) -> None:
        super().__init__("m" * 5_000_000, error_code="huge")


@pytest.mark.parametrize("make_exc", [
    lambda: _Hostile(object()), lambda: _Hostile(503), lambda: _Hostile(["a", 1]), _Huge,
])
async def test_hostile_exceptions_still_reply_and_bury(
    bus: Any, eventually: Any, make_exc: Callable[[], Exception]
) -> None:
    """Unprintable errors, odd error codes and huge messages still give a reply and a letter."""
    worker = bus.worker("inventory", max_deliveries=1)
    runs: list[str] = []

    @worker.handler("inventory.item.boom")
    async def boom(action: DomainAction, data: dict[str, Any]) -> None:
        runs.append(str(action.action_id))
        raise make_exc()

    await worker.start()
    queue = QM.get_response_queue("caller", "hostile")
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.boom",
                                            "callback_queue_name": queue})
    reply = await _pop_reply(bus.redis, queue)
    assert reply.success is False
    assert reply.error is not None
    assert len(reply.error.message) < 5000
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.boom"})
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert letter.reason in ("max_deliveries", "rejected")
    assert len(runs) == 2
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_integer_error_code_reaches_caller_and_callback(bus: Any, eventually: Any) -> None:
    """error_code = 503 gives an error reply ("503") at once, and a failure callback; one run."""
    worker = bus.worker("inventory", max_deliveries=1)
    runs: list[str] = []

    class Unavailable(Exception):
        error_code = 503

    @worker.handler("inventory.item.boom")
    async def boom(action: DomainAction, data: dict[str, Any]) -> None:
        runs.append(str(action.action_id))
        raise Unavailable("down")

    orders = bus.worker("orders")
    callbacks: list[DomainAction] = []

    @orders.handler("orders.item.failed")
    async def failed(action: DomainAction, data: dict[str, Any]) -> None:
        callbacks.append(action)

    await worker.start()
    await orders.start()
    queue = QM.get_response_queue("caller", "int-code")
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.boom",
                                            "callback_queue_name": queue})
    reply = await _pop_reply(bus.redis, queue)
    assert reply.error is not None
    assert reply.error.error_code == "503"
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.item.boom", "origin_service": "orders",
        "callback_action_type": "orders.item.failed",
        "metadata": {"callback_context": "ctx-1"}})
    [callback] = await eventually(lambda: callbacks)
    assert callback.metadata["error"] == {"error_type": "Unavailable", "error_code": "503",
                                          "message": "down", "details": None}
    assert callback.metadata["callback_context"] == "ctx-1"
    assert len(runs) == 2


async def test_entry_without_data_keeps_every_field(bus: Any, eventually: Any) -> None:
    """A dead letter of an entry with no data field keeps all its fields; replay restores them."""
    worker = bus.worker("inventory")
    await worker.start()
    original = await bus.redis.xadd(STREAM, {"action": "x", "blob": b"\xff\x00raw"})
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.reason, letter.error_type, letter.data_missing) == (
        "malformed", "MissingField", True)
    assert letter.fields["action"] == "x"
    await worker.stop()
    await worker.dead_letters.replay(letter.entry_id)
    [(_, fields)] = await bus.redis.xrange(STREAM, min=f"({original.decode()}", max="+")
    assert fields == {b"action": b"x", b"blob": b"\xff\x00raw"}


async def test_oversize_entry_is_buried_before_decoding(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """An entry above max_payload_bytes is buried as oversize with a bounded, hashed body."""
    worker = BaseWorker(make_settings(service_name="inventory", max_payload_bytes=10_000), conn,
                        worker_settings=fast_worker_settings(dead_letter_body_bytes=1000,
                                                             batch_size=50,
                                                             read_budget_bytes=100_000))
    marks: list[int] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        marks.append(len(data["m"]))

    await worker.start()
    try:
        big = json.dumps({"action_type": "inventory.item.mark", "data": {"m": "y" * 20_000}})
        await conn.xadd(STREAM, {"data": big})
        await conn.xadd(STREAM, {"data": json.dumps(
            {"action_type": "inventory.item.mark", "data": {"m": "ok"}})})
        await eventually(lambda: marks == [2])
        [letter] = await eventually(lambda: dead_letters_of(worker))
        assert (letter.reason, letter.truncated, letter.data_length) == ("oversize", True,
                                                                        len(big))
        size = len(big) + len("data")  # the entry: field name and value
        assert (letter.error_type, letter.error_message) == (
            "PayloadTooLarge", f"the entry is {size} bytes, above max_payload_bytes (10000)")
        assert letter.data == big[:1000]
        assert letter.data_sha256 == hashlib.sha256(big.encode()).hexdigest()
        assert worker._processor is not None
        assert worker._processor.read_limit == 100_000 // (len(big) + 4)
        assert worker.stats.bad_input == 1
        with pytest.raises(DeadLetterError, match="oversize"):
            await worker.dead_letters.replay(letter.entry_id)
    finally:
        await worker.stop()


async def test_invalid_pseudo_sync_request_is_replied_and_buried(
    bus: Any, eventually: Any
) -> None:
    """Unknown type or bad data from a waiting caller: an error reply AND a dead letter,
    each counted (error_replies, dead_lettered)."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.typed")
    async def typed(action: DomainAction, data: dict[str, Any]) -> None:
        if "sku" not in data:
            raise ActionRejected("no sku", error_code="invalid_data")

    await worker.start()
    queue = QM.get_response_queue("caller", "bad")
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.nope",
                                            "callback_queue_name": queue})
    reply = await _pop_reply(bus.redis, queue)
    assert reply.error is not None
    assert reply.error.error_code == "unknown_action_type"
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.typed",
                                            "callback_queue_name": queue})
    reply = await _pop_reply(bus.redis, queue)
    assert reply.error is not None
    assert reply.error.error_code == "invalid_data"
    letters = await eventually(lambda: _at_least(worker, 2))
    assert [x.reason for x in letters] == ["unknown_action_type", "rejected"]
    assert worker.stats.bad_input == 2
    assert worker.stats.error_replies == 2
    assert worker.stats.dead_lettered == 2


async def _at_least(worker: BaseWorker, n: int) -> list[Any] | None:
    letters = await dead_letters_of(worker)
    return letters if len(letters) >= n else None


@pytest.mark.parametrize("fields", [
    {"origin_service": "inv", "callback_action_type": "payroll.salary.set",
     "callback_queue_name": QM.get_service_action_stream("payroll")},
    {"origin_service": "orders", "callback_action_type": "payroll.salary.set"},
    {"callback_action_type": "payroll.salary.set",
     "callback_queue_name": QM.get_service_action_stream("payroll")},
])
async def test_callback_to_another_service_is_refused(
    bus: Any, eventually: Any, fields: dict[str, Any]
) -> None:
    """A callback outside the origin service's stream and namespace is buried as bad input
    with the reason it was refused, never sent."""
    worker, marks = _marker_worker(bus)
    await worker.start()
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.mark",
                                            "data": {"m": "forged"}, **fields})
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.mark",
                                            "data": {"m": "after"}})
    await eventually(lambda: marks == ["after"])
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.reason, letter.error_type) == ("callback_not_allowed", "CallbackNotAllowed")
    assert "refused" in letter.error_message  # callback_refusal's reason, e.g. the service
    assert worker.stats.bad_input == 1
    assert await bus.redis.xlen(QM.get_service_action_stream("payroll")) == 0
    assert await bus.redis.xlen(QM.get_service_action_stream("orders")) == 0


async def test_callback_targets_allow_list(bus: Any, eventually: Any) -> None:
    """A service listed in callback_targets may receive callbacks of its own namespace."""
    worker, marks = _marker_worker(bus, callback_targets=["payroll"])
    await worker.start()
    payroll = QM.get_service_action_stream("payroll")
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.item.mark", "data": {"m": "ok"}, "origin_service": "inv",
        "callback_action_type": "payroll.salary.set", "callback_queue_name": payroll})
    await eventually(lambda: bus.redis.xlen(payroll))
    assert marks == ["ok"]


async def test_a_star_in_callback_targets_allows_any_service_and_type(
    bus: Any, eventually: Any
) -> None:
    """callback_targets=["*"]: a callback to a service that is neither the origin nor listed,
    with a type of yet another namespace, is sent, not refused."""
    worker, marks = _marker_worker(bus, callback_targets=["*"])
    await worker.start()
    payroll = QM.get_service_action_stream("payroll")
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.item.mark", "data": {"m": "ok"}, "origin_service": "inv",
        "callback_action_type": "billing.invoice.paid", "callback_queue_name": payroll})
    await eventually(lambda: bus.redis.xlen(payroll))
    [(_, fields)] = await bus.redis.xrange(payroll)
    assert DomainAction.model_validate_json(fields[b"data"]).action_type == \
        "billing.invoice.paid"
    assert marks == ["ok"]
    assert await dead_letters_of(worker) == []


async def test_small_clock_skew_is_tolerated(bus: Any, eventually: Any) -> None:
    """A request whose expires_at passed less than clock_skew_s ago is still answered."""
    worker, marks = _marker_worker(bus, clock_skew_s=30)
    await worker.start()
    queue = QM.get_response_queue("caller", "skew")
    past = format_timestamp(utc_now() - timedelta(seconds=5))
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.mark",
                                            "data": {"m": "late"}, "callback_queue_name": queue,
                                            "expires_at": past})
    reply = await _pop_reply(bus.redis, queue)
    assert reply.success is True
    assert marks == ["late"]


async def test_two_processes_with_one_consumer_name(bus: Any) -> None:
    """A second worker with a running worker's consumer name refuses to start."""
    first = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.5)
    first.register("inventory.item.x", noop)
    await first.start()
    second = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.5)
    with pytest.raises(ConfigurationError, match=r"consumer name .*same.* is in use"):
        await second.start()
    await first.stop()
    third = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.5)
    await third.start()  # the name was released


async def test_a_stopped_worker_releases_its_consumer_name_at_once(bus: Any) -> None:
    """stop() releases the consumer-name lease at once: a successor starts without waiting
    for a 30 s lease to lapse."""
    first = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=30)
    await first.start()
    await first.stop()
    second = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=30)
    await asyncio.wait_for(second.start(), 10)  # unreleased, it would wait 30 s and fail


async def test_a_stopped_worker_stops_refreshing_its_consumer_name(
    bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """After stop() the old lease is not refreshed any more: the successor holding the name
    meets no claim from the stopped worker (which would log that two share the name)."""
    first = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.3)
    await first.start()
    await first.stop()
    second = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.3)
    with caplog.at_level(logging.ERROR, logger="actionbus.worker"):
        await second.start()
        await asyncio.sleep(0.5)  # five refresh periods of a lease left running
    assert [r.getMessage() for r in caplog.records if "held by another" in r.getMessage()] \
        == []


async def test_a_consumer_name_left_by_a_dead_process_is_taken_once_its_lease_lapses(
    bus: Any,
) -> None:
    """A lease left behind by a process that died (nobody refreshes it) does not stop a
    successor with that consumer name: it waits for the lease to lapse, then starts."""
    worker = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.3)
    await bus.redis.set(lease_key(worker.context), "a-dead-process", px=300)
    await asyncio.wait_for(worker.start(), 10)
    assert (await bus.redis.get(lease_key(worker.context))).decode() != "a-dead-process"


async def test_a_held_consumer_name_is_refused_half_a_second_after_one_ttl(bus: Any) -> None:
    """A worker whose consumer name another process holds waits one lease TTL (0.3 s) plus
    half a second, then refuses to start: a lease that lapses 1.2 s after the TTL (0.7 s
    after the refusal) is not waited for."""
    worker = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.3)
    await bus.redis.set(lease_key(worker.context), "a-live-process", px=300 + 1200)
    with pytest.raises(ConfigurationError, match=r"consumer name .*same.* is in use"):
        await asyncio.wait_for(worker.start(), 10)


async def test_the_consumer_name_lease_expires_after_consumer_lease_ttl_s(bus: Any) -> None:
    """The lease on a consumer name is written with a TTL of consumer_lease_ttl_s (here
    30 s, in milliseconds) from the moment it is taken, not only once it is refreshed."""
    worker = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=30)
    lease = await ConsumerLease.take(bus.redis, worker.context)
    try:
        left_ms = await bus.redis.pttl(lease_key(worker.context))
    finally:
        await lease.release()
    assert lease.ttl_ms == 30_000
    assert 20_000 < left_ms <= 30_000


async def test_a_consumer_name_lease_lasts_at_least_100_ms(bus: Any) -> None:
    """A consumer_lease_ttl_s under a tenth of a second is raised to 100 ms: the lease is
    never so short that it lapses between two refreshes."""
    worker = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.01)
    lease = await ConsumerLease.take(bus.redis, worker.context)
    await lease.release()
    assert lease.ttl_ms == 100


async def test_the_consumer_name_lease_is_kept_by_a_task_named_after_it(bus: Any) -> None:
    """A running worker refreshes its consumer-name lease in a task named
    ``actionbus-lease:<service>/<group>/<consumer>`` (what a task dump shows); stop() ends it."""
    worker = bus.worker("inventory", consumer_name="same")
    name = f"actionbus-lease:inventory/{worker.context.group}/same"

    def keepers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]

    await worker.start()
    running = keepers()
    await worker.stop()
    assert len(running) == 1
    assert keepers() == []


async def test_maintenance_trims_dead_letters_and_counts_them(bus: Any, eventually: Any) -> None:
    """worker.maintain() keeps dead_letter_max_len letters and counts the dropped ones."""
    worker = bus.worker("inventory", dead_letter_max_len=2)
    await worker.start()
    for i in range(5):
        await xadd_raw(bus.redis, "inventory", f"not json {i}")
    await eventually(lambda: _at_least(worker, 5))
    await worker.maintain()
    assert [x.data for x in await dead_letters_of(worker)] == ["not json 3", "not json 4"]
    assert worker.stats.dead_letters_trimmed == 3


async def test_reads_shrink_once_large_entries_are_seen(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any, backend: str
) -> None:
    """After a large entry, each read asks for at most read_budget_bytes' worth of entries."""
    worker = BaseWorker(make_settings(service_name="inventory", max_payload_bytes=100_000), conn,
                        worker_settings=fast_worker_settings(batch_size=50,
                                                             read_budget_bytes=60_000))
    marks: list[int] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        marks.append(len(data["m"]))

    await worker.start()
    try:
        big = json.dumps({"action_type": "inventory.item.mark", "data": {"m": "y" * 20_000}})
        await conn.xadd(STREAM, {"data": big})
        await eventually(lambda: marks == [20_000])
        assert worker._processor is not None
        limit = worker._processor.read_limit
        assert 1 <= limit <= 3
        node = {"target_nodes": conn.get_node_from_key(STREAM)} if backend == "cluster" else {}
        await conn.config_resetstat(**node)
        small = json.dumps({"action_type": "inventory.item.mark", "data": {"m": "ok"}})
        async with conn.pipeline(transaction=False) as pipe:
            for _ in range(30):
                pipe.xadd(STREAM, {"data": small})
            await pipe.execute()
        await eventually(lambda: len(marks) == 31)
        stats = await conn.info("commandstats", **node)  # the stream's node on a cluster
        reads = stats["cmdstat_xreadgroup"]["calls"]
        assert reads >= 30 // limit  # one read of 50 would have taken them all at once
    finally:
        await worker.stop()


async def test_read_limit_is_lifted_once_large_entries_stop(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small entry handled after the large-entry memory passed lifts the read limit."""
    monkeypatch.setattr("actionbus.workers.processing._LARGE_MEMORY_S", 0.0)
    worker = BaseWorker(make_settings(service_name="inventory", max_payload_bytes=100_000), conn,
                        worker_settings=fast_worker_settings(batch_size=50,
                                                             read_budget_bytes=60_000))
    marks: list[int] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        marks.append(len(data["m"]))

    await worker.start()
    try:
        big = json.dumps({"action_type": "inventory.item.mark", "data": {"m": "y" * 20_000}})
        await conn.xadd(STREAM, {"data": big})
        await eventually(lambda: marks == [20_000])
        assert worker._processor is not None
        assert worker._processor.read_limit > 0
        small = json.dumps({"action_type": "inventory.item.mark", "data": {"m": "ok"}})
        await conn.xadd(STREAM, {"data": small})
        await eventually(lambda: marks == [20_000, 2])
        assert worker._processor.read_limit == 0
    finally:
        await worker.stop()


async def test_small_data_with_large_other_fields_is_oversize(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The size check counts every field of the entry, not only a small "data"."""
    worker = BaseWorker(make_settings(service_name="inventory", max_payload_bytes=10_000), conn,
                        worker_settings=fast_worker_settings())
    marks = _record_marks(worker)

    await worker.start()
    try:
        small = json.dumps({"action_type": "inventory.item.mark", "data": {"m": "ok"}})
        await conn.xadd(STREAM, {"data": small, "blob": "z" * 80_000})
        [letter] = await eventually(lambda: dead_letters_of(worker))
        assert (letter.reason, letter.error_type) == ("oversize", "PayloadTooLarge")
        assert marks == []
    finally:
        await worker.stop()


async def test_maintenance_trims_old_dead_letters_and_keeps_counting(bus: Any) -> None:
    """worker.maintain() drops dead letters older than dead_letter_max_age_s, and
    dead_letters_trimmed adds up over maintenance rounds."""
    worker = bus.worker("inventory", dead_letter_max_age_s=3600)
    await worker.start()
    dead = QM.get_dead_letter_stream("inventory")
    now_ms = int(time.time() * 1000)
    await bus.redis.xadd(dead, {"data": "old"}, id=f"{now_ms - 7_200_000}-0")
    await bus.redis.xadd(dead, {"data": "new"}, id=f"{now_ms - 60_000}-0")
    await worker.maintain()
    assert [x.data for x in await dead_letters_of(worker)] == ["new"]
    await bus.redis.xadd(dead, {"data": "recent"})
    worker.settings = worker.settings.model_copy(update={"dead_letter_max_age_s": 30})
    await worker.maintain()
    assert [x.data for x in await dead_letters_of(worker)] == ["recent"]
    assert worker.stats.dead_letters_trimmed == 2


def _mark_json(m: str) -> str:
    return json.dumps({"action_type": "inventory.item.mark", "data": {"m": m}},
                      ensure_ascii=False)


def _mark_json_of_length(n: int) -> str:
    """An inventory.item.mark action whose JSON is exactly ``n`` ASCII characters."""
    return _mark_json("y" * (n - len(_mark_json(""))))


async def test_data_of_exactly_max_payload_bytes_is_accepted_one_more_is_oversize(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The limits are inclusive: data of exactly max_payload_bytes bytes is handled, and so
    is an entry of exactly max_payload_bytes + 64 KiB in all (field names included); data
    one byte longer is buried as oversize."""
    worker = BaseWorker(make_settings(service_name="inventory", max_payload_bytes=10_000), conn,
                        worker_settings=fast_worker_settings())
    marks: list[int] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        marks.append(len(data["m"]))

    await worker.start()
    try:
        exact, over = _mark_json_of_length(10_000), _mark_json_of_length(10_001)
        await conn.xadd(STREAM, {"data": exact, "x": "1"})  # two fields: the full check
        small = _mark_json("s")
        blob = "z" * (10_000 + 65_536 - len("data") - len(small) - len("blob"))
        await conn.xadd(STREAM, {"data": small, "blob": blob})
        await conn.xadd(STREAM, {"data": over})
        [letter] = await eventually(lambda: dead_letters_of(worker))
        assert (letter.reason, letter.data_length) == ("oversize", 10_001)
        await eventually(lambda: drained(conn, "inventory"))
        assert marks == [len(json.loads(exact)["data"]["m"]), 1]
    finally:
        await worker.stop()


async def test_field_names_and_every_other_field_count_towards_the_size(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The size check adds up every field name and value, in any order: a huge field name,
    or a huge field written before a small "data", makes the entry oversize."""
    worker = BaseWorker(make_settings(service_name="inventory", max_payload_bytes=10_000), conn,
                        worker_settings=fast_worker_settings())
    marks = _record_marks(worker)

    await worker.start()
    try:
        await conn.xadd(STREAM, {"k" * 80_000: "v", "data": _mark_json("name")})
        await conn.xadd(STREAM, {"blob": "z" * 80_000, "data": _mark_json("first")})
        letters = await eventually(lambda: _at_least(worker, 2))
        assert [x.reason for x in letters] == ["oversize", "oversize"]
        assert marks == []
    finally:
        await worker.stop()


async def test_text_fields_are_sized_in_utf8_bytes_on_a_decoding_client(
    make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """On a client with redis_decode_responses=True a "data" of exactly max_payload_bytes
    characters, some of them multi-byte, is more bytes than allowed: oversize. A text far
    above the limit is reported by its character count (a lower bound, not encoded)."""
    settings = make_settings(service_name="inventory", max_payload_bytes=1000,
                             redis_decode_responses=True)
    worker = BaseWorker(settings, worker_settings=fast_worker_settings())
    worker.register("inventory.item.mark", noop)
    await worker.start()
    try:
        base = _mark_json("")
        exact = _mark_json("é" * 10 + "y" * (1000 - len(base) - 10))
        assert len(exact) == 1000
        far = _mark_json("é" * 2000)
        redis = worker.redis_client
        await redis.xadd(STREAM, {"data": exact})
        await redis.xadd(STREAM, {"data": far})
        letters = await eventually(lambda: _at_least(worker, 2))
        assert [x.reason for x in letters] == ["oversize", "oversize"]
        assert letters[1].error_message == (
            f"the entry is {len(far) + 4} bytes, above max_payload_bytes (1000)")
    finally:
        await worker.stop()


async def test_every_large_entry_seen_is_counted(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Each entry larger than read_budget_bytes / batch_size adds one to
    large_entries_seen; one of exactly that size (field names included) does not. An entry
    above half the budget brings the read limit down to one entry per read."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn,
                        worker_settings=fast_worker_settings(batch_size=10,
                                                             read_budget_bytes=1000))
    marks = _record_marks(worker)

    await worker.start()
    try:
        for _ in range(3):
            await conn.xadd(STREAM, {"data": _mark_json("y" * 300)})
        # 100 bytes in all: "data" + 94 + "x" + "y" (two fields: the full size check)
        await conn.xadd(STREAM, {"data": _mark_json_of_length(94), "x": "y"})
        await eventually(lambda: len(marks) == 4)
        assert worker.stats.large_entries_seen == 3
        await conn.xadd(STREAM, {"data": _mark_json("y" * 700)})
        await eventually(lambda: len(marks) == 5)
        assert worker._processor is not None
        assert worker._processor.read_limit == 1
    finally:
        await worker.stop()


async def test_a_one_field_entry_just_over_the_per_entry_budget_is_counted_large(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The usual entry (one "data" field) on a worker that saw no large entry yet: with
    read_budget_bytes / batch_size = 100, data of 97 bytes (101 with the field name) counts
    as large; data of 96 bytes (exactly 100) does not."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn,
                        worker_settings=fast_worker_settings(batch_size=10,
                                                             read_budget_bytes=1000))
    marks = _record_marks(worker)

    await worker.start()
    try:
        await conn.xadd(STREAM, {"data": _mark_json_of_length(96)})
        await eventually(lambda: len(marks) == 1)
        assert worker.stats.large_entries_seen == 0
        await conn.xadd(STREAM, {"data": _mark_json_of_length(97)})
        await eventually(lambda: len(marks) == 2)
        assert worker.stats.large_entries_seen == 1
    finally:
        await worker.stop()


async def test_an_entry_of_exactly_the_per_entry_budget_after_a_large_one_is_not_large(
    conn: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Once a large entry lowered the read limit, the usual entry (one "data" field) of
    exactly read_budget_bytes / batch_size (96 bytes of data, 100 with the field name) is
    still not counted as large."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn,
                        worker_settings=fast_worker_settings(batch_size=10,
                                                             read_budget_bytes=1000))
    marks = _record_marks(worker)

    await worker.start()
    try:
        await conn.xadd(STREAM, {"data": _mark_json("y" * 300)})
        await eventually(lambda: len(marks) == 1)
        assert worker.stats.large_entries_seen == 1
        assert worker._processor is not None
        assert worker._processor.read_limit > 0
        await conn.xadd(STREAM, {"data": _mark_json_of_length(96)})
        await eventually(lambda: len(marks) == 2)
        assert worker.stats.large_entries_seen == 1
    finally:
        await worker.stop()


async def test_a_worker_reads_the_stream_of_its_key_prefix(
    conn: Any, make_settings: Callable[..., Any], eventually: Any
) -> None:
    """A worker built with CommonAppSettings.key_prefix reads ``<prefix>:...`` streams: an
    action a client of the same prefix sends is handled."""
    settings = make_settings(service_name="inventory", key_prefix="acme")
    worker = BaseWorker(settings, conn, worker_settings=fast_worker_settings())
    marks = _record_marks(worker)
    assert worker.stream.startswith("acme:")
    await worker.start()
    try:
        await conn.xadd(worker.stream, {"data": json.dumps(
            {"action_type": "inventory.item.mark", "data": {"m": "p1"}})})
        await eventually(lambda: marks == ["p1"])
    finally:
        await worker.stop(grace=0.5)


async def test_a_consumer_name_in_use_is_refused_naming_the_holder(bus: Any) -> None:
    """ConsumerLease.take on a name another instance holds gives up after the lease TTL
    and names the holding instance (the lease key's value) in its ConfigurationError."""
    first = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.1)
    second = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=0.1)
    held = await ConsumerLease.take(bus.redis, first.context)
    try:
        holder = await bus.redis.get(lease_key(first.context))
        with pytest.raises(ConfigurationError) as refused:
            await ConsumerLease.take(bus.redis, second.context)
    finally:
        await held.release()
    assert "(instance " in str(refused.value)
    assert holder.decode() in str(refused.value)


async def test_a_name_left_by_a_crashed_holder_is_taken_once_its_lease_expires(bus: Any) -> None:
    """ConsumerLease.take waits up to one lease TTL: a name whose lease a crashed process
    left behind (0.6 s of it left, TTL 1 s) is taken once it expires, without an error."""
    worker = bus.worker("inventory", consumer_name="same", consumer_lease_ttl_s=1.0)
    key = lease_key(worker.context)
    await bus.redis.set(key, "crashed-instance", px=600)
    lease = await ConsumerLease.take(bus.redis, worker.context)
    try:
        assert await bus.redis.get(key) not in (None, b"crashed-instance", "crashed-instance")
    finally:
        await lease.release()
