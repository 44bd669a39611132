"""Ordering keys: one key's actions one at a time in send order, different keys in parallel,
a failing action holds its key back (or not, with "skip"), a new lease holder first runs
what the previous one left pending."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from actionbus import BaseWorker, CommonAppSettings, DomainAction, QueueManager
from actionbus.exceptions import DelayedActionError
from actionbus.partitions import partition_for_key
from tests.conftest import fast_worker_settings

pytestmark = pytest.mark.backends

QM = QueueManager("dev")
SERVICE = "ordered"


def step(key: str, n: int) -> DomainAction:
    """Action number ``n`` of ``key``."""
    return DomainAction(action_type="ordered.item.step", ordering_key=key,
                        data={"key": key, "n": n})


def make_worker(
    make_settings: Callable[..., CommonAppSettings], handler: Any, partitions: int = 1,
    **options: Any,
) -> BaseWorker:
    """A worker of SERVICE whose ``ordered.item.step`` handler is ``handler``."""
    worker = BaseWorker(
        make_settings(service_name=SERVICE, partitions={SERVICE: partitions}),
        worker_settings=fast_worker_settings(**options),
    )
    worker.register("ordered.item.step", handler)
    return worker


def a_waits_for_b() -> tuple[Any, list[tuple[str, int]]]:
    """A step handler whose key a, step 0, runs on only once a key b step has run; and the
    (key, n) list it records each finished step in."""
    b_ran = asyncio.Event()
    order: list[tuple[str, int]] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        if data["key"] == "a" and data["n"] == 0:
            await asyncio.wait_for(b_ran.wait(), 10)
        if data["key"] == "b":
            b_ran.set()
        order.append((data["key"], data["n"]))

    return handle, order


async def test_ordered_actions_go_to_their_keys_partition(
    bus: Any, make_settings: Callable[..., CommonAppSettings]
) -> None:
    """An action with an ordering_key goes to the ordered stream of partition
    crc32(key) % N; delaying it is refused (nothing sent)."""
    client = bus.client("caller", partitions={SERVICE: 3})
    for key in ("a", "b", "order-42"):
        await client.send_action_async(step(key, 0))
    for key in ("a", "b", "order-42"):
        stream = QM.get_ordered_stream(SERVICE, partition_for_key(key, 3))
        entries = await bus.redis.xrange(stream)
        assert any(key.encode() in fields[b"data"] for _, fields in entries)
    with pytest.raises(DelayedActionError, match="ordering_key"):
        await client.send_action_async(step("a", 1), delay=1)


async def test_same_key_in_send_order_and_keys_in_parallel(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """6 keys x 30 actions over 3 partitions: each key's actions run one at a time in
    send order, while different keys run at the same time."""
    seen: dict[str, list[int]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    overlap = 0
    both_started = asyncio.Event()
    first_keys: set[str] = set()

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        nonlocal overlap
        key = data["key"]
        running[key] += 1
        assert running[key] == 1, f"two actions of {key} at once"
        overlap = max(overlap, sum(1 for v in running.values() if v))
        if data["n"] == 0 and key in ("k0", "k1"):  # barrier: both first actions run at once
            first_keys.add(key)
            if len(first_keys) == 2:
                both_started.set()
            await asyncio.wait_for(both_started.wait(), 5)
        await asyncio.sleep(random.uniform(0, 0.003))
        seen[key].append(data["n"])
        running[key] -= 1

    worker = make_worker(make_settings, handle, partitions=3, concurrency=16)
    await worker.start()
    client = bus.client("caller", partitions={SERVICE: 3})
    await client.send_actions_async([step(f"k{k}", n) for n in range(15) for k in range(6)])
    for n in range(15, 30):
        for k in range(6):
            await client.send_action_async(step(f"k{k}", n))
    await eventually(lambda: sum(map(len, seen.values())) == 180, timeout=30)
    assert all(seen[f"k{k}"] == list(range(30)) for k in range(6))
    assert overlap >= 2


@pytest.mark.parametrize("policy", ["hold", "skip"])
async def test_a_failing_action_holds_back_its_key(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any, policy: str
) -> None:
    """hold: the key's later actions wait until the failing one succeeds; skip: they go
    on and the failed one runs later. Other keys go on either way."""
    order: list[str] = []
    failures = {("a", 1): 2}
    retried = asyncio.Event()  # "skip": a1's retry waits until a3 ran

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        key, n = data["key"], data["n"]
        if failures.get((key, n)):
            failures[(key, n)] -= 1
            raise RuntimeError("not yet")
        if policy == "skip" and (key, n) == ("a", 1):
            await asyncio.wait_for(retried.wait(), 5)
        order.append(f"{key}{n}")
        if (key, n) == ("a", 3):
            retried.set()

    worker = make_worker(make_settings, handle, ordering_on_failure=policy)
    await worker.start()
    client = bus.client("caller")
    for n in range(4):
        await client.send_action_async(step("a", n))
        await client.send_action_async(step("b", n))
    await eventually(lambda: len(order) == 8)
    a_order = [x for x in order if x.startswith("a")]
    assert [x for x in order if x.startswith("b")] == ["b0", "b1", "b2", "b3"]
    if policy == "hold":
        assert a_order == ["a0", "a1", "a2", "a3"]
    else:
        assert a_order == ["a0", "a2", "a3", "a1"]


async def test_hold_ends_with_a_dead_letter_then_the_key_goes_on(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """An ordered action failing max_deliveries times is dead-lettered; then its key's
    later actions run, in order."""
    order: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        if data["n"] == 1:
            raise RuntimeError("always")
        order.append(data["n"])

    worker = make_worker(make_settings, handle, max_deliveries=3)
    await worker.start()
    client = bus.client("caller")
    for n in range(4):
        await client.send_action_async(step("a", n))
    await eventually(lambda: len(order) == 3)
    assert order == [0, 2, 3]
    letters = await worker.dead_letters.list()
    assert [letter.reason for letter in letters] == ["max_deliveries"]
    assert letters[0].deliveries == 3


async def test_next_holder_first_runs_what_the_previous_left_pending(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Entries a dead holder read and never acknowledged run first, in stream order,
    before the key's later ones, once its lease lapsed."""
    client = bus.client("caller")
    stream = QM.get_ordered_stream(SERVICE)
    for n in range(6):
        await client.send_action_async(step("a", n))
    await bus.redis.xgroup_create(stream, SERVICE, id="0")
    await bus.redis.xreadgroup(SERVICE, "dead-holder", {stream: ">"}, count=3)  # 0, 1, 2
    await bus.redis.set(QM.get_ordering_lease_key(SERVICE), "dead", px=300)
    order: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(data["n"])

    worker = make_worker(make_settings, handle, ordering_lease_ttl_s=1)
    await worker.start()
    for n in range(6, 9):
        await client.send_action_async(step("a", n))
    await eventually(lambda: len(order) == 9)
    assert order == list(range(9))
    assert await bus.redis.xpending(stream, SERVICE) == {
        "pending": 0, "min": None, "max": None, "consumers": []}


async def test_stopping_hands_the_stream_over_at_once(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """A holder that stops releases its lease: a second worker takes over and the key's
    order holds across the two."""
    order: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(data["n"])

    first = make_worker(make_settings, handle, ordering_lease_ttl_s=60)
    second = make_worker(make_settings, handle, ordering_lease_ttl_s=60)
    await first.start()
    await second.start()
    client = bus.client("caller")
    for n in range(5):
        await client.send_action_async(step("a", n))
    await eventually(lambda: len(order) == 5)
    holder, other = (first, second) if first._ordering and first._ordering.leases else (
        second, first)
    await holder.stop()
    for n in range(5, 10):
        await client.send_action_async(step("a", n))
    await eventually(lambda: len(order) == 10)
    assert order == list(range(10))
    assert other._ordering is not None
    assert other._ordering.leases == 1


async def test_an_ordered_action_left_pending_by_a_redis_error_runs_again_first(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """When carrying out a retry fails with a Redis error (the entry stays pending), the
    holder runs the entry again before its key's next one; each such run counts as a
    delivery, so one that keeps failing is dead-lettered and the key goes on."""
    order: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        if data["n"] == 1:
            raise RuntimeError("always")
        order.append(data["n"])

    worker = make_worker(make_settings, handle, max_deliveries=3)
    calls = 0

    async def broken_retry(*args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("connection lost while parking the retry")

    worker.policy.retry = broken_retry  # type: ignore[method-assign]
    await worker.start()
    client = bus.client("caller")
    for n in range(4):
        await client.send_action_async(step("a", n))
    await eventually(lambda: len(order) == 3, timeout=10)
    assert order == [0, 2, 3]
    assert calls == 2  # deliveries 1 and 2 failed; the 3rd is the last allowed: buried
    letters = await worker.dead_letters.list()
    assert [letter.deliveries for letter in letters] == [3]


@pytest.mark.parametrize("decoded", [False, True])
async def test_different_keys_of_one_ordered_stream_do_not_wait_for_each_other(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any, decoded: bool
) -> None:
    """In one partition's ordered stream, key b's action runs while key a's first action
    is still running (it waits for b's), and a's next one only after a's first; also on a
    client with redis_decode_responses=True."""
    handle, order = a_waits_for_b()

    worker = BaseWorker(
        make_settings(service_name=SERVICE, partitions={SERVICE: 1},
                      redis_decode_responses=decoded),
        worker_settings=fast_worker_settings(),
    )
    worker.register("ordered.item.step", handle)
    await worker.start()
    client = bus.client("caller")
    await client.send_actions_async([step("a", 0), step("a", 1), step("b", 0)])
    await eventually(lambda: len(order) == 3, timeout=15)
    assert order == [("b", 0), ("a", 0), ("a", 1)]


@pytest.mark.parametrize("same_ms", [True, False])
async def test_recovery_pages_through_more_than_a_page_of_pending_entries(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any, same_ms: bool
) -> None:
    """A previous holder left 101 entries pending, with ids of one millisecond (1-1 ..
    1-101) or of sequence 0 (1-0 .. 101-0): the new holder's recovery reads them page by
    page (100 at a time), each page after the last id of the one before, so the 101st
    (key b) is recovered and runs while key a's first entry is still running."""
    stream = QM.get_ordered_stream(SERVICE)
    await bus.redis.xgroup_create(stream, SERVICE, id="0", mkstream=True)
    ids = [f"1-{n + 1}" if same_ms else f"{n + 1}-0" for n in range(101)]
    for n in range(100):
        await bus.redis.xadd(stream, {"data": step("a", n).model_dump_json()}, id=ids[n])
    await bus.redis.xadd(stream, {"data": step("b", 0).model_dump_json()}, id=ids[100])
    taken = await bus.redis.xreadgroup(SERVICE, "dead-holder", {stream: ">"}, count=200)
    assert len(taken[0][1]) == 101
    handle, order = a_waits_for_b()

    worker = make_worker(make_settings, handle, concurrency=200)
    await worker.start()
    await eventually(lambda: len(order) == 101, timeout=20)
    assert order == [("b", 0)] + [("a", n) for n in range(100)]


async def test_an_ordered_stream_never_holds_more_entries_than_concurrency(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """concurrency=3: the holder reads at most 3 entries of the ordered stream; when one
    finishes (its key done) it reads exactly one more, so with 3 actions still running only
    3 entries are delivered (pending) and the rest stays unread."""
    started: list[str] = []
    release = asyncio.Event()

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        started.append(data["key"])
        if data["key"] != "f":
            await release.wait()

    stream = QM.get_ordered_stream(SERVICE)
    client = bus.client("caller")
    await client.send_actions_async([step(key, 0) for key in ("f", "b", "c", "d", "g")])
    worker = make_worker(make_settings, handle, concurrency=3)
    await worker.start()
    try:
        await eventually(lambda: "d" in started, timeout=10)
        assert (await bus.redis.xpending(stream, SERVICE))["pending"] == 3
        assert sorted(started) == ["b", "c", "d", "f"]
    finally:
        release.set()
    await eventually(lambda: len(started) == 5)


async def test_the_holder_keeps_refreshing_its_lease(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """While it holds an ordered stream, the worker refreshes the lease (every third of
    its TTL): its remaining time goes back up instead of running out."""
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    lease = QM.get_ordering_lease_key(SERVICE)
    worker = make_worker(make_settings, handle, ordering_lease_ttl_s=3)
    await worker.start()
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    assert await bus.redis.pttl(lease) > 0
    seen: list[int] = []

    async def refreshed() -> bool:  # a reading well above the one before it: a refresh
        seen.append(int(await bus.redis.pttl(lease)))
        return any(later > earlier + 100 for earlier, later in itertools.pairwise(seen))

    await eventually(refreshed, timeout=10)


async def test_the_holder_keeps_its_lease_past_its_ttl_without_losing_it_once(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A holder with a 1 s lease, watched for 3.5 s: every refresh goes through (no
    "could not refresh", no "lost the lease"), and the lease is still its own at the end,
    not lapsed and taken again."""
    caplog.set_level(logging.DEBUG, "actionbus.worker")
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    lease = QM.get_ordering_lease_key(SERVICE)
    worker = make_worker(make_settings, handle, ordering_lease_ttl_s=1)
    await worker.start()
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    holder = await bus.redis.get(lease)
    takes = sum("handles the ordered actions" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(3.5)
    problems = [r.getMessage() for r in caplog.records
                if "could not refresh" in r.getMessage() or "lost the lease" in r.getMessage()]
    assert problems == []
    assert await bus.redis.get(lease) == holder
    assert await bus.redis.pttl(lease) > 0
    assert sum("handles the ordered actions" in r.getMessage() for r in caplog.records) == takes


async def test_a_recovered_entry_counts_its_earlier_delivery(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """An entry a dead holder read once is recovered as its 2nd delivery: with
    max_deliveries=3 and a handler that always fails, it runs twice here and is
    dead-lettered with deliveries=3."""
    client = bus.client("caller")
    stream = QM.get_ordered_stream(SERVICE)
    await client.send_action_async(step("a", 0))
    await bus.redis.xgroup_create(stream, SERVICE, id="0")
    await bus.redis.xreadgroup(SERVICE, "dead-holder", {stream: ">"}, count=1)
    runs: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        runs.append(data["n"])
        raise RuntimeError("always")

    worker = make_worker(make_settings, handle, max_deliveries=3)
    await worker.start()
    [letter] = await eventually(lambda: worker.dead_letters.list(), timeout=10)
    assert (letter.reason, letter.deliveries) == ("max_deliveries", 3)
    assert runs == [0, 0]


async def test_handled_ordered_actions_leave_no_acknowledgement_marks_behind(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Once an ordered action's acknowledgement landed, the holder forgets it: after many
    handled actions it keeps no per-action marks (memory does not grow with traffic)."""
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    worker = make_worker(make_settings, handle)
    await worker.start()
    await bus.client("caller").send_actions_async([step("a", n) for n in range(20)])
    await eventually(lambda: len(handled) == 20)
    stream = QM.get_ordered_stream(SERVICE)
    await eventually(lambda: _no_pending(bus.redis, stream))
    assert worker._ordering is not None
    assert worker._ordering.acked == set()


async def _no_pending(redis: Any, stream: str) -> bool:
    return int((await redis.xpending(stream, SERVICE))["pending"]) == 0


async def test_after_losing_and_retaking_the_lease_the_holder_reads_on(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """A holder that loses its lease while a key still has queued entries lets them go
    (they stay pending); once it takes the lease back it recovers them and goes on reading
    new actions: the entries it dropped no longer count against its concurrency."""
    go = asyncio.Event()
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        if data["n"] == 0:
            await asyncio.wait_for(go.wait(), 10)
        handled.append(data["n"])

    worker = make_worker(make_settings, handle, concurrency=3, ordering_lease_ttl_s=0.6)
    await worker.start()
    client = bus.client("caller")
    await client.send_actions_async([step("a", n) for n in range(3)])
    assert worker._ordering is not None
    ordering = worker._ordering
    await eventually(lambda: ordering.leases == 1)
    await bus.redis.set(QM.get_ordering_lease_key(SERVICE), "thief", px=1000)
    await eventually(lambda: ordering.leases == 0)
    go.set()
    await eventually(lambda: handled[:1] == [0])
    await eventually(lambda: ordering.leases == 1, timeout=10)  # the thief's lease lapsed
    await client.send_action_async(step("a", 3))
    await eventually(lambda: sorted(handled) == [0, 1, 2, 3], timeout=10)


async def test_an_action_keyed_xxxx_does_not_hold_back_keyless_entries(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """An ordered-stream entry whose action has no ordering_key runs on its own while an
    action of key "XXXX" (any key name) is still running: keyless entries share no key's
    queue."""
    stream = QM.get_ordered_stream(SERVICE)
    keyless = DomainAction(action_type="ordered.item.step", data={"key": "", "n": 0})
    await bus.redis.xadd(stream, {"data": step("XXXX", 0).model_dump_json()})
    await bus.redis.xadd(stream, {"data": keyless.model_dump_json()})
    keyless_ran = asyncio.Event()
    waited: list[bool] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        if data["key"] == "XXXX":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(keyless_ran.wait(), 10)
            waited.append(keyless_ran.is_set())
        else:
            keyless_ran.set()

    worker = make_worker(make_settings, handle)
    await worker.start()
    await eventually(lambda: waited, timeout=20)
    assert waited == [True]


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_an_idle_holder_blocks_on_its_ordered_stream_instead_of_polling(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Once its ordered work is done, the lease holder waits in a blocking XREADGROUP: over
    one idle second the worker sends a handful of reads (a blocking read lasts up to
    block_ms), not the hundreds a read loop without BLOCK sends."""
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    worker = make_worker(make_settings, handle, block_ms=1000)
    await worker.start()
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    assert await bus.redis.exists(QM.get_ordering_lease_key(SERVICE))  # it holds the lease

    async def reads() -> int:
        stats: Any = await bus.redis.info("commandstats")
        return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))

    before = await reads()
    await asyncio.sleep(1.0)
    idle_reads = await reads() - before
    print(f"XREADGROUP calls over one idle second: {idle_reads}")
    assert idle_reads < 40


async def test_recovering_a_single_pending_entry_runs_it_without_a_loop_failure(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A previous holder left exactly one entry pending (a recovery page of one row): the
    new holder runs it, then the key's next action, and its ordered loop logs no failure."""
    caplog.set_level(logging.ERROR, "actionbus")
    client = bus.client("caller")
    stream = QM.get_ordered_stream(SERVICE)
    await client.send_action_async(step("a", 0))
    await bus.redis.xgroup_create(stream, SERVICE, id="0")
    await bus.redis.xreadgroup(SERVICE, "dead-holder", {stream: ">"}, count=1)
    order: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(data["n"])

    worker = make_worker(make_settings, handle)
    await worker.start()
    await eventually(lambda: order == [0])
    await client.send_action_async(step("a", 1))  # barrier: the loop went on reading
    await eventually(lambda: order == [0, 1])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_a_lease_another_worker_holds_is_neither_taken_nor_overwritten(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """While another worker holds an ordered stream's lease, a worker polling for ordered
    work (XLEN, then SET NX) leaves the lease alone and runs none of its actions; once the
    lease is gone it takes the stream over and runs them."""
    client = bus.client("caller")
    lease = QM.get_ordering_lease_key(SERVICE)
    await client.send_action_async(step("a", 0))
    await bus.redis.set(lease, "other-holder", px=60_000)
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    worker = make_worker(make_settings, handle, maintenance_interval_s=3600)
    await worker.start()
    await _two_more_polls(bus.redis, eventually)
    assert await bus.redis.get(lease) == b"other-holder"
    assert handled == []
    assert worker._ordering is not None
    assert worker._ordering.leases == 0
    await bus.redis.delete(lease)
    await eventually(lambda: handled == [0])


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_a_lease_another_worker_holds_leaves_its_entries_unread(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The stream's group exists (a previous holder made it) and another worker holds the
    lease: a polling worker that fails to take the lease reads none of the stream's entries
    (they stay new, for the holder); once the lease is gone it takes it and runs them."""
    client = bus.client("caller")
    stream, lease = QM.get_ordered_stream(SERVICE), QM.get_ordering_lease_key(SERVICE)
    await bus.redis.xgroup_create(stream, SERVICE, id="0", mkstream=True)
    await bus.redis.set(lease, "other-holder", px=60_000)
    await client.send_action_async(step("a", 0))
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    worker = make_worker(make_settings, handle, maintenance_interval_s=3600)
    await worker.start()
    await _two_more_polls(bus.redis, eventually)
    assert (await bus.redis.xpending(stream, SERVICE))["pending"] == 0
    assert handled == []
    await bus.redis.delete(lease)
    await eventually(lambda: handled == [0])


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_an_ordered_stream_is_read_only_after_its_lease_is_taken(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """An idle worker polls its empty ordered stream (its group exists) without reading it:
    an action sent then is delivered once, by the read after the worker took the lease
    (XPENDING counts 1 delivery while the handler runs), not read before the lease and
    claimed again."""
    stream = QM.get_ordered_stream(SERVICE)
    await bus.redis.xgroup_create(stream, SERVICE, id="0", mkstream=True)
    release = asyncio.Event()
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])
        await release.wait()

    worker = make_worker(make_settings, handle, maintenance_interval_s=3600)
    await worker.start()
    await _two_more_polls(bus.redis, eventually)
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    [pending] = await bus.redis.xpending_range(stream, SERVICE, min="-", max="+", count=10)
    release.set()
    assert pending["times_delivered"] == 1


async def _xlen_calls(redis: Any) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_xlen", {}).get("calls", 0))


async def _two_more_polls(redis: Any, eventually: Any) -> None:
    """Barrier: two more XLENs of the ordered poll loop, counted from now (after the
    worker's start, whose partition probe also runs XLENs), mean one poll (XLEN, then
    SET NX for the lease) is done."""
    before = await _xlen_calls(redis)
    await eventually(lambda: _at_least(lambda: _xlen_calls(redis), before + 2))


async def _at_least(count: Callable[[], Any], n: int) -> bool:
    return bool(await count() >= n)


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_a_worker_without_ordered_actions_takes_no_lease(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """A worker whose ordered stream is empty keeps polling it (XLEN) but never takes its
    lease: services that never use ordering keys get no lease key."""
    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        """Never called: nothing is sent."""

    worker = make_worker(make_settings, handle, maintenance_interval_s=3600)
    await worker.start()
    await _two_more_polls(bus.redis, eventually)
    assert not await bus.redis.exists(QM.get_ordering_lease_key(SERVICE))
    assert worker._ordering is not None
    assert worker._ordering.leases == 0


async def test_stopping_never_raises_when_the_lease_cannot_be_released(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """A holder whose lease release fails at stop (here Redis answers WRONGTYPE: the lease
    key was replaced by a hash) still stops without raising; the lease then lapses."""
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    worker = make_worker(make_settings, handle)
    await worker.start()
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    assert worker._ordering is not None
    assert worker._ordering.leases == 1
    lease = QM.get_ordering_lease_key(SERVICE)
    await bus.redis.delete(lease)
    await bus.redis.hset(lease, "not", "a lease")
    await worker.stop(grace=0.5)  # must not raise
    assert worker._ordering.leases == 0


async def test_stopping_ends_the_lease_keeper_task(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """A holder's stop() ends the task that refreshes its lease: no lease keeper is left
    running once stop() returned."""
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    name = f"actionbus-lease:{QM.get_ordering_lease_key(SERVICE)}"

    def keepers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]

    worker = make_worker(make_settings, handle)
    await worker.start()
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    assert len(keepers()) == 1
    await worker.stop(grace=0.5)
    assert keepers() == []


async def test_an_ordered_reply_redis_refuses_is_dead_lettered_and_marks_the_worker(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """An ordered action whose reply Redis refuses (WRONGTYPE: the reply list is a string)
    is dead-lettered as undeliverable by this worker's consumer, the worker is marked
    unhealthy, and the key's next action runs."""
    victim = QM.get_response_queue("victim", "str")
    await bus.redis.set(victim, "not a list")
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        handled.append(data["n"])
        return {"n": data["n"]}

    worker = make_worker(make_settings, handle)
    await worker.start()
    refused = step("a", 0).model_copy(update={"callback_queue_name": victim})
    entry_id = (await bus.redis.xadd(QM.get_ordered_stream(SERVICE), {
        "data": refused.model_dump_json(exclude_none=True)})).decode()
    await bus.client("caller").send_action_async(step("a", 1))
    await eventually(lambda: handled == [0, 1])
    letters = await worker.dead_letters.list()
    assert [(d.reason, d.original_id, d.consumer) for d in letters] == [
        ("undeliverable", entry_id, worker.consumer)]
    assert not worker.health.healthy
    assert await bus.redis.get(victim) == b"not a list"


async def test_the_before_ack_seam_sees_ordered_entries_too(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The worker's fault-injection seam ``before_ack`` is called with an ordered entry's
    key just before its acknowledgement is queued, as for main-stream entries."""
    seen: list[str] = []
    handled: list[int] = []

    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    worker = make_worker(make_settings, handle)
    worker.before_ack = seen.append
    await worker.start()
    await bus.client("caller").send_action_async(step("a", 0))
    await eventually(lambda: handled == [0])
    await eventually(lambda: _no_pending(bus.redis, QM.get_ordered_stream(SERVICE)))
    [entry] = await bus.redis.xrange(QM.get_ordered_stream(SERVICE))
    assert len(seen) == 1
    assert seen[0].endswith(entry[0].decode())
