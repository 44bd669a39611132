"""The read loop (workers/reader.py): concurrency bound, groups and consumers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    RedisManager,
    WorkerSettings,
)
from actionbus.backoff import OutageLog
from actionbus.workers.reader import StreamReader
from actionbus.workers.stats import WorkerStats
from tests.workers.helpers import QM

pytestmark = pytest.mark.backends


async def test_concurrency_bound_respected(bus: Any, eventually: Any) -> None:
    """No more than ``concurrency`` handlers run at the same time."""
    worker = bus.worker("inventory", concurrency=3)
    running = 0
    peak = 0
    done: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        done.append(1)

    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.slow") for _ in range(12)]
    )
    await worker.start()
    await eventually(lambda: len(done) == 12)
    assert peak == 3


async def test_consumers_of_one_group_share_the_work(bus: Any, eventually: Any) -> None:
    """Two workers of one service split the actions; each action is handled once."""
    seen: list[tuple[str, int]] = []
    for name in ("w1", "w2"):
        worker = bus.worker("inventory", consumer_name=name, concurrency=2)

        async def handle(action: DomainAction, data: dict[str, Any], name: str = name) -> None:
            await asyncio.sleep(0.01)
            seen.append((name, data["i"]))

        worker.register("inventory.item.n", handle)
        await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.n", data={"i": i}) for i in range(20)]
    )
    await eventually(lambda: len(seen) == 20)
    await asyncio.sleep(0.1)
    assert sorted(i for _, i in seen) == list(range(20))
    assert {name for name, _ in seen} == {"w1", "w2"}


async def test_separate_groups_each_get_every_action(bus: Any, eventually: Any) -> None:
    """A worker with its own group_name receives every action too (fan-out)."""
    seen: dict[str, list[int]] = {"inventory": [], "audit": []}
    for group in ("inventory", "audit"):
        worker = bus.worker("inventory", group_name=group)

        async def handle(action: DomainAction, data: dict[str, Any], group: str = group) -> None:
            seen[group].append(data["i"])

        worker.register("inventory.item.n", handle)
        await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.n", data={"i": i}) for i in range(3)]
    )
    await eventually(lambda: len(seen["inventory"]) == 3 and len(seen["audit"]) == 3)


async def test_reader_feeds_entries_of_every_stream_it_reads(redis_client: Any) -> None:
    """One StreamReader reads several streams of its group and spawns each entry once."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(block_ms=100, consumer_name="c1"))
    ctx = worker.context
    streams = [ctx.stream, QM.get_service_action_stream("inventory-low")]
    for stream in streams:
        await redis_client.xgroup_create(stream, ctx.group, id="0", mkstream=True)
        await redis_client.xadd(stream, {"data": "{}"})
    spawned: list[tuple[str, int]] = []
    stopping = asyncio.Event()

    def spawn(stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        spawned.append((stream, deliveries))
        if len(spawned) == len(streams):
            stopping.set()

    reader = StreamReader(
        ctx, redis_client, streams, spawn=spawn, in_flight=lambda: 0, owned=set,
        unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
    )
    await asyncio.wait_for(reader.run(stopping), 10)
    assert sorted(spawned) == sorted((stream, 1) for stream in streams)


async def test_reader_waits_for_a_free_slot(redis_client: Any) -> None:
    """With no free slot the reader reads nothing until a slot is signalled free."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(block_ms=100, concurrency=1))
    ctx = worker.context
    await redis_client.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
    await redis_client.xadd(ctx.stream, {"data": "{}"})
    busy = [1]
    spawned: list[str] = []
    stopping = asyncio.Event()

    def spawn(stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        spawned.append(entry_id)
        stopping.set()

    reader = StreamReader(
        ctx, redis_client, [ctx.stream], spawn=spawn, in_flight=lambda: busy[0], owned=set,
        unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
    )
    task = asyncio.create_task(reader.run(stopping))
    for _ in range(20):  # let it loop: it must park on slot_free, not read
        await asyncio.sleep(0)
    assert spawned == []
    assert await redis_client.xpending(ctx.stream, ctx.group) == {
        "pending": 0, "min": None, "max": None, "consumers": []}
    busy[0] = 0
    reader.slot_free.set()
    await asyncio.wait_for(task, 10)
    assert len(spawned) == 1


async def test_deleted_stream_gets_its_group_back_and_actions_flow_again(
    bus: Any, eventually: Any, caplog: Any
) -> None:
    """A stream deleted under a running worker (as after Redis restarted empty): the read's
    NOGROUP recreates the group, logged with group and stream, and later actions are handled."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    worker = bus.worker("inventory")
    seen: list[str] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["m"])

    client = bus.client("orders")
    await worker.start()
    await client.send_action_async(DomainAction(action_type="inventory.item.mark",
                                                data={"m": "before"}))
    await eventually(lambda: seen == ["before"])
    await bus.redis.delete(worker.stream)
    await eventually(lambda: any("was missing" in r.getMessage() for r in caplog.records))
    await client.send_action_async(DomainAction(action_type="inventory.item.mark",
                                                data={"m": "after"}))
    await eventually(lambda: seen == ["before", "after"])
    [line] = [r.getMessage() for r in caplog.records if "was missing" in r.getMessage()]
    assert line == (f"consumer group inventory on {worker.stream} was missing (Redis restarted "
                    "empty or the stream was deleted); recreated it")


async def test_a_group_that_cannot_be_recreated_is_retried_with_backoff_not_in_a_spin(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOGROUP while XGROUP CREATE cannot reach Redis: the read loop backs off between
    attempts (here at most a few in half a second, not one per round trip), then recreates the
    group once Redis answers and handles the next action."""
    worker = bus.worker("inventory")
    seen: list[str] = []

    @worker.handler("inventory.item.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["m"])

    await worker.start()
    attempts: list[float] = []
    real_create = worker.redis_client.xgroup_create

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        raise RedisConnectionError("injected: XGROUP CREATE lost")

    monkeypatch.setattr(worker.redis_client, "xgroup_create", unreachable)
    await bus.redis.delete(worker.stream)
    await eventually(lambda: len(attempts) >= 1)
    await asyncio.sleep(0.5)
    assert len(attempts) <= 15, f"{len(attempts)} XGROUP CREATE attempts in about 0.5 s"
    monkeypatch.setattr(worker.redis_client, "xgroup_create", real_create)
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.mark",
                                                data={"m": "after"}))
    await eventually(lambda: seen == ["after"])


def _lanes_reader(redis: Any, block_ms: int, spawned: list[tuple[str, str]]) -> StreamReader:
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(block_ms=block_ms, consumer_name="c1"))

    def spawn(stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        spawned.append((stream, entry_id))

    return StreamReader(
        worker.context, redis, LANES, spawn=spawn, in_flight=lambda: 0, owned=set,
        unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
    )


LANES = list(QM.get_lane_streams("inventory"))  # one hash tag: also runs on a cluster


async def test_idle_lanes_wait_in_one_blocking_read_of_one_entry_per_lane(
    redis_client: Any, eventually: Any
) -> None:
    """With every lane empty the reader blocks on all lanes at once; two entries arriving
    together in one lane wake it, and it takes one of them (one per lane); a block that
    times out with nothing reports that nothing was read."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    spawned: list[tuple[str, str]] = []
    idle = _lanes_reader(redis_client, 100, spawned)
    assert await idle._read_lanes(3) is False
    reader = _lanes_reader(redis_client, 5_000, spawned)
    task = asyncio.create_task(reader._read_lanes(3))

    async def blocked() -> bool:
        where = ({"target_nodes": redis_client.get_node_from_key(LANES[0])}
                 if isinstance(redis_client, RedisCluster) else {})
        return int((await redis_client.info("clients", **where))["blocked_clients"]) == 1

    await eventually(blocked)
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd(LANES[2], {"data": "{}"})
    pipe.xadd(LANES[2], {"data": "{}"})
    first, _ = [entry_id.decode() for entry_id in await pipe.execute()]
    assert await asyncio.wait_for(task, 10) is True
    assert spawned == [(LANES[2], first)]


async def test_weighted_reads_start_by_smooth_round_robin_and_take_their_share(
    redis_client: Any,
) -> None:
    """With every lane full and the default weights 6/3/1, ten reads of 10 start with
    high, normal, high, high, normal, high, low, high, normal, high; the chosen lane takes
    its share (6, 3 or 1 of 10) and high, read next, the rest."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
        pipe = redis_client.pipeline(transaction=False)
        for _ in range(100):
            pipe.xadd(stream, {"data": "{}"})
        await pipe.execute()
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    shares = []
    for _ in range(10):
        before = len(spawned)
        assert await reader._read_lanes(10) is True
        batch = [stream for stream, _ in spawned[before:]]
        shares.append(tuple(batch.count(stream) for stream in LANES))
    high, normal, low = (10, 0, 0), (7, 3, 0), (9, 0, 1)
    assert shares == [high, normal, high, high, normal, high, low, high, normal, high]


async def test_the_most_urgent_lane_is_looked_at_in_every_read(redis_client: Any) -> None:
    """A high-lane entry added just after a read that found the high lane empty is the first
    entry of the very next read (no read skips a lane it found empty a moment ago), and that
    read brings exactly as many entries as asked, its fields intact."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(50):
        pipe.xadd(LANES[1], {"data": f"bulk {i}"})
    await pipe.execute()
    spawned: list[tuple[str, str]] = []
    fields: list[dict[Any, Any]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    original = reader.spawn

    def spawn(stream: str, entry_id: str, entry: dict[Any, Any], deliveries: int) -> None:
        fields.append(entry)
        original(stream, entry_id, entry, deliveries)

    reader.spawn = spawn
    for _ in range(3):
        assert await reader._read_lanes(5) is True  # high empty each time: bulk only
    assert [stream for stream, _ in spawned] == [LANES[1]] * 15
    urgent = (await redis_client.xadd(LANES[0], {"data": "urgent"})).decode()
    assert await reader._read_lanes(5) is True
    assert spawned[15] == (LANES[0], urgent)
    assert len(spawned) == 20
    assert fields[15] == {b"data": b"urgent"}
    assert fields[16] == {b"data": b"bulk 15"}


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_after_a_read_that_emptied_the_lanes_the_next_is_one_blocking_read(
    redis_client: Any,
) -> None:
    """A lane read that brought less than asked (every lane emptied) is followed by one
    blocking read only, no script call first; an entry that arrived meanwhile comes back at
    once from it (each lane bringing at most count // lanes), and only a blocking read where
    a lane gave all it could is followed by a script read again."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await redis_client.xadd(LANES[1], {"data": "a"})
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 5_000, spawned)

    async def calls() -> tuple[int, int]:
        stats = await redis_client.info("commandstats")
        return (stats.get("cmdstat_evalsha", {}).get("calls", 0),
                stats.get("cmdstat_xreadgroup", {}).get("calls", 0))

    assert await reader._read_lanes(10) is True  # 1 of 10: the lanes are empty now
    late = (await redis_client.xadd(LANES[0], {"data": "b"})).decode()
    before = await calls()
    assert await asyncio.wait_for(reader._read_lanes(10), 5) is True
    after = await calls()
    assert spawned[-1] == (LANES[0], late)
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)
    pipe = redis_client.pipeline(transaction=False)
    for n in range(5):
        pipe.xadd(LANES[2], {"data": f"c{n}"})
    await pipe.execute()
    assert await reader._read_lanes(10) is True  # blocking again: returns at once, 10 // 3
    assert len(spawned) == 5
    assert (await calls())[0] == after[0]
    assert await reader._read_lanes(10) is True  # that lane gave all it could: script read
    assert len(spawned) == 7
    assert (await calls())[0] == after[0] + 1  # small reads: READ_LANES alone, no counts


async def _bulk(redis: Any, n: int) -> None:
    """The lanes' groups, and ``n`` entries "bulk 0" … in the normal lane."""
    for stream in LANES:
        await redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(LANES[1], {"data": f"bulk {i}"})
    await pipe.execute()


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_a_large_lane_read_after_another_is_plain_xreadgroups_not_the_script(
    redis_client: Any,
) -> None:
    """A read that follows one of 16 or more entries counts the lanes too (LANE_LAGS in
    the same round trip); right after it, with one lane alone holding entries, a read of 16
    or more takes that lane's entries with one plain XREADGROUP and asks the empty high lane
    for one entry with another (no script call: 2 XREADGROUPs), not through READ_LANES,
    whose reply Redis converts at about 2 us per entry, nor LANE_LAGS again; and it is not
    taken for a drained read although it brings one entry less than asked."""
    await _bulk(redis_client, 100)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 5_000, spawned)

    async def calls() -> tuple[int, int]:
        stats = await redis_client.info("commandstats")
        return (stats.get("cmdstat_evalsha", {}).get("calls", 0),
                stats.get("cmdstat_xreadgroup", {}).get("calls", 0))

    assert await reader._read_lanes(20) is True  # READ_LANES alone
    before = await calls()
    assert await reader._read_lanes(20) is True  # after 20: READ_LANES and LANE_LAGS
    after = await calls()
    assert (after[0] - before[0], len(spawned)) == (2, 40)
    for n in (59, 78):
        before = await calls()
        assert await reader._read_lanes(20) is True
        after = await calls()
        assert (after[0] - before[0], after[1] - before[1]) == (0, 2)
        assert len(spawned) == n
    assert {stream for stream, _ in spawned} == {LANES[1]}


@pytest.mark.standalone_only("a cluster client's lane rounds are redis-py pipelines")
async def test_lane_read_rounds_of_a_plain_client_bypass_redis_py_pipelines(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a plain client, the lane reads that send several commands (READ_LANES with
    LANE_LAGS, then planned reads) write them on a pooled connection themselves, not
    through a redis-py ``Pipeline`` (about 2 us of the worker's CPU per action of a read of
    100), and bring what a pipeline would: every entry in order, the client usable after."""
    await _bulk(redis_client, 100)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)

    def no_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a lane read made a redis-py pipeline")

    monkeypatch.setattr(redis_client, "pipeline", no_pipeline)
    for _ in range(4):  # READ_LANES; with LANE_LAGS; planned twice
        assert await reader._read_lanes(20) is True
    assert [entry_id for _, entry_id in spawned] == [
        entry_id.decode() for entry_id, _ in await redis_client.xrange(LANES[1], count=78)]
    assert await redis_client.ping() is True


async def test_an_urgent_entry_that_came_after_the_lanes_were_counted_is_read_next(
    redis_client: Any,
) -> None:
    """A read planned from the counts of the read before it still asks the high lane,
    found empty then, for one entry: an urgent entry added in between is the first entry
    of the next read, the bulk lane filling the rest."""
    await _bulk(redis_client, 100)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes
        assert await reader._read_lanes(20) is True
    assert await reader._read_lanes(20) is True  # planned: 19 bulk, the probe found nothing
    urgent = (await redis_client.xadd(LANES[0], {"data": "urgent"})).decode()
    assert await reader._read_lanes(20) is True
    assert spawned[59] == (LANES[0], urgent)
    assert [stream for stream, _ in spawned[60:]] == [LANES[1]] * 19


async def test_urgent_entries_found_by_a_bulk_read_are_all_read_by_the_next(
    redis_client: Any,
) -> None:
    """A bulk read (one lane alone known to hold entries) that finds an urgent entry with
    its one-entry probe of the high lane ends the bulk reads: the next read counts the
    lanes again and takes every urgent entry left before any bulk entry (not one per read)."""
    await _bulk(redis_client, 200)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(3):  # the second counts the lanes, the third is a bulk read
        assert await reader._read_lanes(20) is True
    assert len(spawned) == 59
    pipe = redis_client.pipeline(transaction=False)
    for i in range(3):
        pipe.xadd(LANES[0], {"data": f"urgent {i}"})
    urgent = [entry_id.decode() for entry_id in await pipe.execute()]
    assert await reader._read_lanes(20) is True  # the bulk read's probe: the first of them
    assert spawned[59:61] == [(LANES[0], urgent[0]), (LANES[1], spawned[60][1])]
    assert await reader._read_lanes(20) is True
    assert spawned[79:81] == [(LANES[0], entry_id) for entry_id in urgent[1:]]
    assert {stream for stream, _ in spawned[81:]} == {LANES[1]}


async def test_a_bulk_read_starting_with_the_low_lane_gives_it_its_share(
    redis_client: Any,
) -> None:
    """Weighted: low-lane entries that arrive during bulk reads of the normal lane are left
    alone by the reads that start with another lane (as by planned reads of a lane counted
    empty) and get the low lane's share (2 of 20) in the first read that starts with it
    (the seventh: high, normal, high, high, normal, high, low)."""
    await _bulk(redis_client, 300)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(3):  # the second counts the lanes, the third is a bulk read
        assert await reader._read_lanes(20) is True
    pipe = redis_client.pipeline(transaction=False)
    for i in range(5):
        pipe.xadd(LANES[2], {"data": f"low {i}"})
    low = [entry_id.decode() for entry_id in await pipe.execute()]
    for _ in range(3):
        assert await reader._read_lanes(20) is True
    assert {stream for stream, _ in spawned} == {LANES[1]}
    before = len(spawned)
    assert await reader._read_lanes(20) is True
    assert spawned[before:] == [*spawned[before:before + 17], *((LANES[2], i) for i in low[:2])]
    assert {stream for stream, _ in spawned[before:before + 17]} == {LANES[1]}


async def test_bulk_reads_of_other_sizes_ask_for_what_each_may_bring(
    redis_client: Any,
) -> None:
    """The commands a bulk read keeps for next time are kept per size: bulk reads of 20,
    then 16, then 20 again each bring exactly as many entries as asked (the high lane's
    probe found nothing: one less)."""
    await _bulk(redis_client, 200)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes
        assert await reader._read_lanes(20) is True
    sizes = []
    for count in (20, 16, 20):
        before = len(spawned)
        assert await reader._read_lanes(count) is True
        sizes.append(len(spawned) - before)
    assert sizes == [19, 15, 19]


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_a_bulk_read_that_empties_its_lane_is_followed_by_one_blocking_read(
    redis_client: Any,
) -> None:
    """A bulk read whose lane brings less than asked, the high lane's probe nothing, left
    every lane it asked empty: the next read is one blocking read of all lanes (here it
    times out), no script read first."""
    await _bulk(redis_client, 60)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(4):  # the second counts the lanes, the third and fourth are bulk reads
        assert await reader._read_lanes(20) is True
    assert len(spawned) == 60
    stats = await redis_client.info("commandstats")
    assert await reader._read_lanes(20) is False
    after = await redis_client.info("commandstats")
    assert after["cmdstat_evalsha"]["calls"] == stats["cmdstat_evalsha"]["calls"]
    assert after["cmdstat_xreadgroup"]["calls"] == stats["cmdstat_xreadgroup"]["calls"] + 1


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_a_lane_reader_loads_its_scripts_again_after_redis_lost_them(
    redis_client: Any,
) -> None:
    """After SCRIPT FLUSH (a restarted Redis) the lane reader loads its scripts again: the
    planned read (two lanes hold entries) then gets no counts, the reads after it are
    script reads that bring all they ask, counting the lanes again, and the one after
    those is planned again."""
    await _bulk(redis_client, 150)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(50):
        pipe.xadd(LANES[2], {"data": f"low {i}"})
    await pipe.execute()
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes
        assert await reader._read_lanes(20) is True
    await redis_client.script_flush()
    assert await reader._read_lanes(20) is True  # planned: its LANE_LAGS found no script
    assert len(spawned) == 59
    for _ in range(2):  # READ_LANES loaded again, then with LANE_LAGS loaded again
        assert await reader._read_lanes(20) is True
    assert len(spawned) == 99
    before = (await redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert await reader._read_lanes(20) is True
    assert (await redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"] == before + 1
    assert [entry_id for _, entry_id in spawned] == [  # no read started with the low lane
        entry_id.decode() for entry_id, _ in await redis_client.xrange(LANES[1], count=118)]


async def test_a_lane_read_failing_part_way_has_its_entries_recovered(
    redis_client: Any,
) -> None:
    """A planned read whose bulk lane lost its group fails, but the urgent entry its probe
    took in the same round trip is not lost: the reader asks for recovery, which gives it
    back to this consumer."""
    await _bulk(redis_client, 100)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes
        assert await reader._read_lanes(20) is True
    urgent = (await redis_client.xadd(LANES[0], {"data": "urgent"})).decode()
    await redis_client.xgroup_destroy(LANES[1], "inventory")
    reader.recover_now.clear()
    with pytest.raises(ResponseError, match="NOGROUP"):
        await reader._read_lanes(20)
    assert reader.recover_now.is_set()
    await redis_client.xgroup_create(LANES[1], "inventory", id="$")
    await reader.recover_own(10)
    assert spawned[40:] == [(LANES[0], urgent)]


async def test_an_urgent_entry_sent_while_every_slot_was_busy_is_read_first(
    bus: Any, eventually: Any
) -> None:
    """Counts taken before the worker waited for a free slot are stale: the read after the
    wait looks at every lane afresh, so urgent entries sent meanwhile all start before the
    bulk entries that were already waiting (with 20 slots: the first 20 bulk entries end
    at once, the second read of 20 counts the lanes and fills every slot)."""
    worker = bus.worker("lanes", lanes=True, lane_mode="strict", concurrency=20)
    order: list[str] = []
    release = asyncio.Event()

    @worker.handler("lanes.item.bulk")
    async def bulk(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(f"bulk{data['n']}")
        if data["n"] >= 20:
            await release.wait()

    @worker.handler("lanes.item.urgent")
    async def urgent(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(f"urgent{data['n']}")

    client = bus.client("orders")
    await worker.start()
    await client.send_actions_async(
        [DomainAction(action_type="lanes.item.bulk", data={"n": n}) for n in range(60)])
    await eventually(lambda: len(order) == 40)
    await client.send_actions_async(
        [DomainAction(action_type="lanes.item.urgent", data={"n": n}) for n in range(5)],
        priority="high",
    )
    release.set()
    await eventually(lambda: len(order) == 65)
    assert order[40:45] == [f"urgent{n}" for n in range(5)]


async def test_reclaim_skips_lane_entries_this_worker_is_still_handling(
    redis_client: Any,
) -> None:
    """An entry of a lane that this worker still handles (its heartbeat late, so idle past
    claim_idle_ms in Redis) is not reclaimed from under its handler; an abandoned entry of
    the same lane beside it is."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(consumer_name="c1", claim_idle_ms=100))
    ctx = worker.context
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    mine = (await redis_client.xadd(LANES[2], {"data": "mine"})).decode()
    gone = (await redis_client.xadd(LANES[2], {"data": "gone"})).decode()
    await redis_client.xreadgroup("inventory", "c1", {LANES[2]: ">"}, count=1)
    await redis_client.xreadgroup("inventory", "dead", {LANES[2]: ">"}, count=1)
    await asyncio.sleep(0.2)  # both idle past claim_idle_ms (100 ms)
    spawned: list[tuple[str, str]] = []
    reader = StreamReader(
        ctx, redis_client, LANES,
        spawn=lambda stream, entry_id, fields, deliveries: spawned.append((stream, entry_id)),
        in_flight=lambda: 0, owned=lambda: {f"{LANES[2]} {mine}"},
        unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
    )
    await reader.reclaim(10)
    assert spawned == [(LANES[2], gone)]


async def test_stream_reads_parse_as_redis_py_does_with_a_faster_parser(
    redis_client: Any,
) -> None:
    """A worker's client parses XREADGROUP replies with its own parser (the usual
    one-field entry built directly), giving exactly what redis-py's own gives: entries of
    one field, of several, an entry deleted while pending (empty fields), nothing new."""
    from actionbus.streams import fast_stream_reads

    stream = QM.get_service_action_stream("fastread")
    await redis_client.xgroup_create(stream, "g", id="0", mkstream=True)
    first = await redis_client.xadd(stream, {"data": "one"})
    await redis_client.xadd(stream, {"data": "two", "trace": "t"})
    await redis_client.xadd(stream, {"other": "three"})

    async def reads() -> list[Any]:
        return [
            await redis_client.xreadgroup("g", "c", {stream: "0"}, count=10),
            await redis_client.xreadgroup("g", "c", {stream: ">"}, count=10),
        ]

    await redis_client.xreadgroup("g", "c", {stream: ">"}, count=10)  # all pending now
    await redis_client.xdel(stream, first)
    original = redis_client.response_callbacks["XREADGROUP"]
    expected = await reads()
    fast_stream_reads(redis_client)
    installed = redis_client.response_callbacks["XREADGROUP"]
    assert installed is not original
    assert installed.fast_of is original
    assert await reads() == expected
    assert expected[0][0][1][0] == (first, {})  # the deleted entry
    assert [fields for _, fields in expected[0][0][1][1:]] == [
        {b"data": b"two", b"trace": b"t"}, {b"other": b"three"}]
    assert expected[1] == []
    fast_stream_reads(redis_client)  # once only: the fast parser is not wrapped again
    assert redis_client.response_callbacks["XREADGROUP"] is installed


async def test_a_started_worker_reads_with_the_faster_parser(bus: Any) -> None:
    """start() puts the faster XREADGROUP parser on the worker's client."""
    worker = bus.worker("fastread")
    await worker.start()
    assert hasattr(worker.redis_client.response_callbacks["XREADGROUP"], "fast_of")


def _strict_reader(
    redis: Any, streams: list[str], spawned: list[tuple[str, str, dict[Any, Any]]]
) -> StreamReader:
    """A strict-mode reader of ``streams`` (lanes, most urgent first) recording its spawns."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(block_ms=100, consumer_name="c1",
                                                       lane_mode="strict"))
    return StreamReader(
        worker.context, redis, streams,
        spawn=lambda stream, entry_id, fields, deliveries: spawned.append(
            (stream, entry_id, fields)),
        in_flight=lambda: 0, owned=set, unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
    )


async def test_a_lane_read_keeps_every_field_of_an_entry(redis_client: Any) -> None:
    """An entry read by the lanes script comes with all its fields, paired as written,
    however many it has."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await redis_client.xadd(LANES[0], {"a": "1", "data": "x", "z": "26"})
    spawned: list[tuple[str, str, dict[Any, Any]]] = []
    reader = _strict_reader(redis_client, LANES, spawned)
    assert await reader._read_lanes(5) is True
    assert [fields for _, _, fields in spawned] == [{b"a": b"1", b"data": b"x", b"z": b"26"}]


async def test_streams_of_several_slots_read_one_by_one_bring_exactly_what_was_asked(
    redis_client: Any,
) -> None:
    """A reader given streams of different hash slots reads them one XREADGROUP each, most
    urgent first, each taking what is left: 3 asked of streams holding 2, 5 and 5 entries
    bring the first stream's 2 and one of the second, and nothing of the third."""
    streams = [QM.get_service_action_stream(s)
               for s in ("inventory", "inventory-low", "inventory-bulk")]
    for stream, n in zip(streams, (2, 5, 5), strict=True):
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
        for i in range(n):
            await redis_client.xadd(stream, {"data": f"{i}"})
    spawned: list[tuple[str, str, dict[Any, Any]]] = []
    reader = _strict_reader(redis_client, streams, spawned)
    assert reader._scripts is None  # several slots: no script
    assert await reader._read_lanes(3) is True
    assert [(stream, fields) for stream, _, fields in spawned] == [
        (streams[0], {b"data": b"0"}), (streams[0], {b"data": b"1"}),
        (streams[1], {b"data": b"0"})]


async def test_a_reader_on_a_decoding_client_spawns_entries_by_their_ids(
    make_settings: Any,
) -> None:
    """A StreamReader built without spawn_read, on a client with
    redis_decode_responses=True, spawns each entry with its id as read (already text)."""
    from actionbus import RedisManager

    settings = make_settings(service_name="inventory", redis_decode_responses=True)
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        worker = BaseWorker(settings, redis,
                            worker_settings=WorkerSettings(block_ms=100, consumer_name="c1"))
        ctx = worker.context
        await redis.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
        entry_id = await redis.xadd(ctx.stream, {"data": "{}"})
        spawned: list[str] = []
        stopping = asyncio.Event()

        def spawn(stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
            spawned.append(entry_id)
            stopping.set()

        reader = StreamReader(
            ctx, redis, [ctx.stream], spawn=spawn, in_flight=lambda: 0, owned=set,
            unacknowledged=set, stats=WorkerStats(),
            outage=OutageLog(logging.getLogger("test"), "reader"),
        )
        await asyncio.wait_for(reader.run(stopping), 10)
    assert spawned == [entry_id]


async def test_planned_reads_take_what_the_lanes_script_would_of_two_full_lanes(
    redis_client: Any,
) -> None:
    """Weighted, with the high and normal lanes full: planned reads (from the counts of the
    read before) take exactly 20 per read of 20, the lane a read starts with capped at its
    share (normal: 6 of 20), the high lane the rest, as READ_LANES would."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(100):
        pipe.xadd(LANES[0], {"data": f"high {i}"})
        pipe.xadd(LANES[1], {"data": f"normal {i}"})
    await pipe.execute()
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    shares = []
    for _ in range(5):  # the second counts the lanes, the third to fifth are planned
        before = len(spawned)
        assert await reader._read_lanes(20) is True
        batch = [stream for stream, _ in spawned[before:]]
        shares.append(tuple(batch.count(stream) for stream in LANES))
    high, normal = (20, 0, 0), (14, 6, 0)
    assert shares == [high, normal, high, high, normal]


def _weighted_reader(redis: Any, spawned: list[tuple[str, str]],
                     weights: tuple[int, int, int]) -> StreamReader:
    """A weighted-mode lanes reader with ``lane_weights`` ``weights``, recording its spawns."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(block_ms=100, consumer_name="c1",
                                                       lane_weights=weights))
    return StreamReader(
        worker.context, redis, LANES,
        spawn=lambda stream, entry_id, fields, deliveries: spawned.append((stream, entry_id)),
        in_flight=lambda: 0, owned=set, unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
    )


def _record_rounds(reader: StreamReader) -> list[list[tuple[Any, ...]]]:
    """The commands of every round trip ``reader`` sends from now on (lane reads of
    several commands), as it sends them."""
    rounds: list[list[tuple[Any, ...]]] = []
    send = reader._round

    async def recorded(commands: list[tuple[Any, ...]], packed: Any = None) -> list[Any]:
        rounds.append([tuple(command) for command in commands])
        return await send(commands, packed)

    reader._round = recorded  # type: ignore[method-assign]
    return rounds


async def _fill(redis: Any, lane: str, n: int, label: str) -> list[str]:
    """``n`` entries "<label> 0" … in ``lane``; their ids."""
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(lane, {"data": f"{label} {i}"})
    return [entry_id.decode() for entry_id in await pipe.execute()]


async def _two_full_lanes(redis: Any) -> None:
    """The lanes' groups, 100 entries in the normal lane and 100 in the low one."""
    for stream in LANES:
        await redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await _fill(redis, LANES[1], 100, "normal")
    await _fill(redis, LANES[2], 100, "low")


async def test_strict_bulk_reads_of_the_high_lane_leave_the_other_lanes_waiting(
    redis_client: Any,
) -> None:
    """Strict: while the high lane alone was counted holding entries, the bulk reads of it
    ask no other lane for a share, so normal and low entries that arrive meanwhile wait
    until the high lane is empty (every entry of five reads of 20 is a high one)."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await _fill(redis_client, LANES[0], 200, "high")
    spawned: list[tuple[str, str, dict[Any, Any]]] = []
    reader = _strict_reader(redis_client, LANES, spawned)
    for _ in range(2):  # the second counts the lanes: the high lane alone holds entries
        assert await reader._read_lanes(20) is True
    await _fill(redis_client, LANES[1], 5, "normal")
    await _fill(redis_client, LANES[2], 5, "low")
    for _ in range(5):
        assert await reader._read_lanes(20) is True
    assert len(spawned) == 140
    assert {stream for stream, _, _ in spawned} == {LANES[0]}


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_after_a_bulk_read_whose_probe_found_an_urgent_entry_the_lanes_are_counted(
    redis_client: Any,
) -> None:
    """A bulk read that brought all it asked of the high lane (its one-entry probe found an
    urgent entry) is followed by a read that counts the lanes again: READ_LANES and
    LANE_LAGS in one round trip (2 EVALSHA), not READ_LANES alone."""
    await _bulk(redis_client, 200)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(3):  # the second counts the lanes, the third is a bulk read
        assert await reader._read_lanes(20) is True
    await _fill(redis_client, LANES[0], 3, "urgent")
    assert await reader._read_lanes(20) is True  # bulk: the probe brings the first urgent
    assert spawned[59][0] == LANES[0]
    before = (await redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert await reader._read_lanes(20) is True
    assert (await redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"] == before + 2


async def test_a_weighted_bulk_read_that_starts_with_the_bulk_lane_asks_it_once(
    redis_client: Any,
) -> None:
    """Weighted, bulk reads of the normal lane: the fifth read, which starts with the
    normal lane itself, sends what the others send (the high lane's one-entry probe and one
    XREADGROUP of the normal lane for the rest, no script), and the bulk reads go on."""
    await _bulk(redis_client, 200)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes
        assert await reader._read_lanes(20) is True
    rounds = _record_rounds(reader)
    for _ in range(4):  # reads 3 to 6 start with high, high, normal, high
        assert await reader._read_lanes(20) is True
    asked = [[(command[0], command[-2], command[5]) for command in sent] for sent in rounds]
    assert asked == [[("XREADGROUP", LANES[0], 1), ("XREADGROUP", LANES[1], 19)]] * 4
    assert len(spawned) == 116


async def test_a_bulk_read_gives_a_lane_whose_share_rounds_to_one_one_entry(
    redis_client: Any,
) -> None:
    """Weighted with lane_weights 20/1/1, bulk reads of 16 of the high lane: the first read
    that starts with the normal lane asks it for its share, which rounds up to one entry
    (16 * 1/22), and takes exactly one of the normal entries waiting."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await _fill(redis_client, LANES[0], 400, "high")
    spawned: list[tuple[str, str]] = []
    reader = _weighted_reader(redis_client, spawned, (20, 1, 1))
    for _ in range(2):  # the second counts the lanes: the high lane alone holds entries
        assert await reader._read_lanes(16) is True
    normal = await _fill(redis_client, LANES[1], 5, "normal")
    reads = 0
    while not any(stream == LANES[1] for stream, _ in spawned):
        reads += 1
        before = len(spawned)
        assert reads <= 22
        assert await reader._read_lanes(16) is True
    assert spawned[before:] == [*spawned[before:before + 15], (LANES[1], normal[0])]
    assert {stream for stream, _ in spawned[:-1]} == {LANES[0]}


async def test_a_planned_read_sends_the_high_lanes_probe_inside_the_lane_count(
    redis_client: Any,
) -> None:
    """Weighted, the normal and low lanes full, the high lane counted empty: a planned read
    sends one XREADGROUP per lane it takes from and asks the high lane for its one entry
    inside LANE_LAGS (its probe argument 1), not as an XREADGROUP of its own."""
    await _two_full_lanes(redis_client)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes (starts with normal)
        assert await reader._read_lanes(20) is True
    rounds = _record_rounds(reader)
    assert await reader._read_lanes(20) is True  # starts with high: normal takes the rest
    [sent] = rounds
    assert [command[:1] + command[5:8] for command in sent[:-1]] == [
        ("XREADGROUP", 19, "STREAMS", LANES[1])]
    assert sent[-1][0] == "EVALSHA"
    assert sent[-1][2:] == (3, *LANES, "inventory", "c1", 1)
    assert len(spawned) == 59


async def test_an_urgent_entry_is_first_in_a_planned_read_of_two_lanes(
    redis_client: Any,
) -> None:
    """A planned read of two full lanes (normal and low), counted with the high lane
    empty, still takes one entry of the high lane: an urgent entry added after the count
    is the first entry of that read."""
    await _two_full_lanes(redis_client)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):  # the second counts the lanes
        assert await reader._read_lanes(20) is True
    [urgent] = await _fill(redis_client, LANES[0], 1, "urgent")
    assert await reader._read_lanes(20) is True
    assert spawned[40] == (LANES[0], urgent)
    assert len(spawned) == 60


async def test_a_lane_redis_cannot_count_keeps_the_reads_on_the_lanes_script(
    redis_client: Any,
) -> None:
    """Strict: a lane whose count Redis cannot tell (an entry deleted ahead of the group:
    XINFO GROUPS gives no lag) is not taken for counted: the reads stay READ_LANES reads,
    each bringing all 20 it asks, the normal lane's 30 entries and then the low lane's, not
    a bulk read of the normal lane that stops short when it empties."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await _fill(redis_client, LANES[1], 30, "normal")
    low = await _fill(redis_client, LANES[2], 100, "low")
    await redis_client.xdel(LANES[2], low[50])
    spawned: list[tuple[str, str, dict[Any, Any]]] = []
    reader = _strict_reader(redis_client, LANES, spawned)
    sizes = []
    for _ in range(4):
        before = len(spawned)
        assert await reader._read_lanes(20) is True
        sizes.append(len(spawned) - before)
    assert sizes == [20, 20, 20, 20]
    assert [entry_id for stream, entry_id, _ in spawned[30:]] == low[:50]


async def test_a_refused_lane_read_names_every_lane_in_the_health_status(
    redis_client: Any, eventually: Any,
) -> None:
    """A lane read Redis refuses (the low lane's key holds a string: WRONGTYPE) makes the
    reader's health name the operation with every lane, comma-separated."""
    from actionbus.workers.health import Health

    for stream in LANES[:2]:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await redis_client.set(LANES[2], "not a stream")
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    reader.health = Health(logging.getLogger("test"), "reader")
    stopping = asyncio.Event()
    task = asyncio.create_task(reader.run(stopping))
    try:
        await eventually(lambda: bool(reader.health and reader.health.refusals))
    finally:
        stopping.set()
        reader.slot_free.set()
        await asyncio.wait_for(task, 10)
    [line] = reader.health.status().problems
    assert line.startswith(f"Redis refused XREADGROUP {', '.join(LANES)}: ")
    assert "WRONGTYPE" in line


async def test_reads_of_16_or_more_are_planned_smaller_ones_stay_on_the_lanes_script(
    redis_client: Any,
) -> None:
    """Weighted, the normal and low lanes full, reads of 16 (PLAN_MIN): the first is
    READ_LANES alone; having brought all 16 it asked, the second also counts the lanes
    (READ_LANES and LANE_LAGS in one round trip); the third is planned from those counts
    (plain XREADGROUPs, then LANE_LAGS), and brings 15 (the high lane's probe found
    nothing); a read of 15 after it is not planned but READ_LANES alone."""
    await _two_full_lanes(redis_client)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    rounds = _record_rounds(reader)
    for count in (16, 16, 16, 15):
        assert await reader._read_lanes(count) is True
    assert [[command[0] for command in sent] for sent in rounds] == [
        ["EVALSHA", "EVALSHA"], ["XREADGROUP", "EVALSHA"]]
    assert len(spawned) == 62


async def test_a_lane_counted_holding_one_entry_is_read_by_the_next_planned_read(
    redis_client: Any,
) -> None:
    """Strict, the normal lane holding 45 entries and the low lane one: the third read of 20
    is planned from counts of 5 and 1 (two lanes hold entries: no bulk read of the normal
    lane) and takes the normal lane's last 5 and the low lane's one."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await _fill(redis_client, LANES[1], 45, "normal")
    [low] = await _fill(redis_client, LANES[2], 1, "low")
    spawned: list[tuple[str, str, dict[Any, Any]]] = []
    reader = _strict_reader(redis_client, LANES, spawned)
    for _ in range(3):
        assert await reader._read_lanes(20) is True
    assert len(spawned) == 46
    assert spawned[-1][:2] == (LANES[2], low)


async def test_the_one_lane_counted_holding_one_entry_gives_it_to_a_bulk_read(
    redis_client: Any,
) -> None:
    """The normal lane alone holding 41 entries, reads of 20: the second read counts one
    entry left there, and the third (a bulk read of that lane) brings it."""
    await _bulk(redis_client, 41)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(3):
        assert await reader._read_lanes(20) is True
    assert len(spawned) == 41
    assert spawned[-1] == (LANES[1], spawned[-1][1])


async def test_a_read_whose_counts_show_every_lane_empty_is_followed_by_a_blocking_read(
    redis_client: Any,
) -> None:
    """The normal lane holding exactly 40 entries, reads of 20: the second brings all it
    asks and counts every lane empty, so the third is one blocking read of the lanes alone
    (it times out) with no script round trip before it."""
    await _bulk(redis_client, 40)
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    for _ in range(2):
        assert await reader._read_lanes(20) is True
    rounds = _record_rounds(reader)
    assert await reader._read_lanes(20) is False
    assert rounds == []
    assert len(spawned) == 40


async def test_recovering_own_entries_takes_as_many_as_slots_are_free_across_the_lanes(
    redis_client: Any,
) -> None:
    """Entries a lost read delivered to this consumer (2 in the high lane, 5 in the
    normal one) are taken back most urgent lane first, as many as slots are free: with one
    free slot the first high entry, with three both high entries and the first normal."""
    for stream in LANES:
        await redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    high = await _fill(redis_client, LANES[0], 2, "high")
    normal = await _fill(redis_client, LANES[1], 5, "normal")
    for stream in LANES[:2]:
        await redis_client.xreadgroup("inventory", "c1", {stream: ">"})
    spawned: list[tuple[str, str]] = []
    reader = _lanes_reader(redis_client, 100, spawned)
    await reader.recover_own(1)
    assert spawned == [(LANES[0], high[0])]
    spawned.clear()
    await reader.recover_own(3)
    assert spawned == [(LANES[0], high[0]), (LANES[0], high[1]), (LANES[1], normal[0])]


async def _command_calls(redis: Any, *commands: str) -> int:
    """How many times the server ran ``commands`` (INFO commandstats), summed."""
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


@pytest.mark.standalone_only("stops and restarts a server of its own")
async def test_the_read_loop_reads_again_once_redis_is_back(
    fresh_redis_server_aof: Any, eventually: Any,
) -> None:
    """Redis stopped under a running worker and started again: the read loop backs off
    through the outage and goes on reading, and an action sent after the restart is
    handled (the loop does not end on a connection error)."""
    from tests.conftest import fast_worker_settings

    server = fresh_redis_server_aof
    settings = CommonAppSettings(_env_file=None, redis_url=server.url,
                                 service_name="inventory")
    worker = BaseWorker(settings, worker_settings=fast_worker_settings())
    handled: list[int] = []

    @worker.handler("inventory.item.add")
    async def add(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    stream = QM.get_service_action_stream("inventory")
    await worker.start()
    try:
        async with RedisManager(settings) as manager:
            client = BaseRedisClient("orders", manager.get_client(), settings)
            await client.send_action_async(
                DomainAction(action_type="inventory.item.add", data={"n": 1}))
            await eventually(lambda: handled == [1])
            server.stop()
            await eventually(lambda: worker.health.in_outage, timeout=10)
            server.restart()
            await client.send_action_async(
                DomainAction(action_type="inventory.item.add", data={"n": 2}))
            await eventually(lambda: handled == [1, 2], timeout=15)
            assert await manager.get_client().xlen(stream) >= 1
    finally:
        await worker.stop(grace=0.5)


async def _one_slot_worker(
    bus: Any, **settings: Any
) -> tuple[BaseWorker, asyncio.Event, list[int]]:
    """A started "inventory" worker of concurrency 1 whose ``inventory.item.hold`` handler
    records ``data["n"]`` and then holds its slot until the returned event is set."""
    worker = bus.worker("inventory", concurrency=1, **settings)
    release = asyncio.Event()
    handled: list[int] = []

    @worker.handler("inventory.item.hold")
    async def hold(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])
        await release.wait()

    await worker.start()
    return worker, release, handled


async def test_a_worker_whose_every_slot_is_busy_waits_for_one_without_reading(
    bus: Any, eventually: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """With its one slot busy, the read loop waits for the slot to free instead of reading
    (a read of 0 entries is no read: redis-py refuses COUNT 0), so no outage is reported
    meanwhile; the waiting entry is handled once the slot frees."""
    caplog.set_level(logging.WARNING, "actionbus")
    worker, release, handled = await _one_slot_worker(bus)
    client = bus.client("orders")
    for n in (1, 2):
        await client.send_action_async(
            DomainAction(action_type="inventory.item.hold", data={"n": n}))
    await eventually(lambda: handled == [1])
    await eventually(lambda: worker._reader is not None and worker._reader.waiting_for_slot)
    assert not worker.health.in_outage
    assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()] == []
    release.set()
    await eventually(lambda: handled == [1, 2])


async def test_a_worker_of_one_slot_takes_back_its_lost_delivery_once_the_slot_frees(
    bus: Any, eventually: Any,
) -> None:
    """A recovery asked for while the worker's one slot is busy (a read went wrong) is
    kept, not dropped: once the slot frees, the entry a lost read delivered to this
    consumer is taken back and handled, long before the next periodic reclaim (the
    consumer "late-34" has its first one near 58 s of 60)."""
    service = "inventory"
    stream = QM.get_service_action_stream(service)
    worker, release, handled = await _one_slot_worker(
        bus, consumer_name="late-34", reclaim_interval_s=60)
    await bus.client("orders").send_action_async(
        DomainAction(action_type="inventory.item.hold", data={"n": 1}))
    await eventually(lambda: handled == [1])
    await eventually(lambda: worker._reader is not None and worker._reader.waiting_for_slot)
    # a read whose reply was lost: the entry is pending on this consumer, never handled
    await bus.redis.xadd(
        stream, {"data": '{"action_type": "inventory.item.hold", "data": {"n": 2}}'})
    await bus.redis.xreadgroup(service, "late-34", {stream: ">"})
    assert worker._reader is not None
    worker._reader.recover_now.set()
    await asyncio.sleep(0.2)  # the recovery loop sees the request while the slot is busy
    release.set()
    await eventually(lambda: handled == [1, 2])


@pytest.mark.standalone_only("counts the commands of the one server (INFO commandstats)")
async def test_an_idle_worker_takes_back_its_own_deliveries_only_at_start(
    bus: Any, eventually: Any,
) -> None:
    """Idle, with reads that return nothing after each 100 ms block, a worker does not
    look for lost deliveries after every read: over 15 reads, at most the start's one
    recovery runs (and no reclaim: the first is near 58 s of 60 for "late-34"), so at most
    3 recovery commands (1 seen here), not one per read."""
    worker = bus.worker("inventory", consumer_name="late-34", reclaim_interval_s=60)
    await worker.start()
    reads = await _command_calls(bus.redis, "xreadgroup")
    recoveries = await _command_calls(bus.redis, "xpending", "xclaim", "xautoclaim")
    await eventually(
        lambda: _more_than(bus.redis, "xreadgroup", reads + 15), timeout=10)
    assert await _command_calls(bus.redis, "xpending", "xclaim", "xautoclaim") - (
        recoveries) <= 3


@pytest.mark.standalone_only("counts the commands of the one server (INFO commandstats)")
async def test_after_its_first_reclaim_a_worker_waits_an_interval_for_the_next(
    bus: Any, eventually: Any,
) -> None:
    """"early-14" reclaims first near 0.2 s of 4, then not before 2 s (half the interval at
    least): over its first 15 reads (1.5 s) it sends at most 8 recovery commands (3 seen
    here: the start's recovery and one reclaim), not one after another without end."""
    worker = bus.worker("inventory", consumer_name="early-14", reclaim_interval_s=4)
    recoveries = await _command_calls(bus.redis, "xpending", "xclaim", "xautoclaim")
    reads = await _command_calls(bus.redis, "xreadgroup")
    await worker.start()
    await eventually(
        lambda: _more_than(bus.redis, "xreadgroup", reads + 15), timeout=10)
    assert await _command_calls(bus.redis, "xpending", "xclaim", "xautoclaim") - (
        recoveries) <= 8


async def _more_than(redis: Any, command: str, calls: int) -> bool:
    return await _command_calls(redis, command) > calls


@pytest.mark.standalone_only("counts the commands of the one server (INFO commandstats)")
async def test_an_idle_blocking_read_is_not_a_slow_command(
    bus: Any, make_settings: Any, eventually: Any,
) -> None:
    """A read that waits its whole block (900 ms) and returns nothing is not slow, though
    the block and its wait together exceed the socket timeout (1.5 s): only the time past
    the block counts."""
    from tests.conftest import fast_worker_settings

    worker = BaseWorker(make_settings(service_name="inventory", redis_socket_timeout=1.5),
                        worker_settings=fast_worker_settings(block_ms=900))
    await worker.start()
    try:
        reads = await _command_calls(bus.redis, "xreadgroup")
        await eventually(lambda: _more_than(bus.redis, "xreadgroup", reads + 2), timeout=10)
        assert worker.health.slow_commands == 0
    finally:
        await worker.stop(grace=0.5)


@pytest.mark.standalone_only("pauses the one server (CLIENT PAUSE)")
async def test_a_stalled_read_is_logged_as_a_slow_xreadgroup(
    bus: Any, make_settings: Any, eventually: Any, redis_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stalled (CLIENT PAUSE 2.5 s) past the socket timeout while the worker reads:
    the read's time beyond its block counts as a slow command, logged naming XREADGROUP."""
    from tests.conftest import fast_worker_settings

    caplog.set_level(logging.WARNING, "actionbus")
    worker = BaseWorker(make_settings(service_name="inventory", redis_socket_timeout=1.0),
                        worker_settings=fast_worker_settings())
    await worker.start()
    try:
        with redis_server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 2500, "ALL")
        await eventually(lambda: any(
            "(XREADGROUP took longer than the socket timeout" in r.getMessage()
            for r in caplog.records), timeout=15)
        assert worker.health.slow_commands >= 1
    finally:
        await worker.stop(grace=0.5)


async def test_a_slow_recovery_is_logged_naming_xpending_xclaim(
    redis_client: Any, eventually: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """A recovery round that takes longer than the slow-command threshold (here any
    duration: the threshold is negative) is logged as slow naming "recovery
    (XPENDING/XCLAIM)", the operation an operator has to look at."""
    from actionbus.workers.health import SlowCommands

    caplog.set_level(logging.WARNING, "actionbus")
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(consumer_name="c1"))
    ctx = worker.context
    await redis_client.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
    reader = StreamReader(
        ctx, redis_client, [ctx.stream], spawn=lambda *args: None,
        in_flight=lambda: 0, owned=set, unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
        slow=SlowCommands(None, -1.0),
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(reader.run_recovery(stopping))
    try:
        await eventually(lambda: reader.slow.count >= 1)
    finally:
        stopping.set()
        reader.recover_now.set()
        await asyncio.wait_for(task, 10)
    assert any("(recovery (XPENDING/XCLAIM) took longer than the socket timeout"
               in r.getMessage() for r in caplog.records)


async def test_a_refused_recovery_names_the_operation_in_the_health_status(
    redis_client: Any, eventually: Any,
) -> None:
    """A recovery Redis refuses (the stream's key holds a string: WRONGTYPE, not an
    outage) makes the reader's health name XPENDING/XCLAIM and the stream."""
    from actionbus.workers.health import Health

    stream = QM.get_service_action_stream("inventory")
    await redis_client.set(stream, "not a stream")
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(consumer_name="c1"))
    reader = StreamReader(
        worker.context, redis_client, [stream], spawn=lambda *args: None,
        in_flight=lambda: 0, owned=set, unacknowledged=set, stats=WorkerStats(),
        outage=OutageLog(logging.getLogger("test"), "reader"),
        health=Health(logging.getLogger("test"), "reader"),
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(reader.run_recovery(stopping))
    try:
        await eventually(lambda: bool(reader.health and reader.health.refusals))
    finally:
        stopping.set()
        reader.recover_now.set()
        await asyncio.wait_for(task, 10)
    assert reader.health is not None
    [line] = reader.health.status().problems
    assert line.startswith(f"Redis refused XPENDING/XCLAIM {stream}: ")
    assert "WRONGTYPE" in line
