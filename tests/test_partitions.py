"""Partitioned services on one Redis: key layout, spreading, the count senders follow,
and every guarantee (retry, reclaim, dead letters, drain-and-switch) per partition."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from actionbus import BaseWorker, CommonAppSettings, DomainAction, QueueManager
from actionbus.clients.partitions import PartitionRouter
from actionbus.exceptions import ConfigurationError, InvalidNameError
from actionbus.partitions import MAX_PARTITIONS, partition_for_key
from tests.conftest import fast_worker_settings

pytestmark = pytest.mark.backends

QM = QueueManager("dev")
SERVICE = "parts"


def streams(n: int) -> list[str]:
    """The partition streams of SERVICE."""
    return QM.get_partition_streams(SERVICE, n)


def job(i: int) -> DomainAction:
    """One action for SERVICE."""
    return DomainAction(action_type="parts.job.run", data={"i": i})


def make_worker(
    make_settings: Callable[..., CommonAppSettings], partitions: int, seen: Counter[int],
    *, fail_first: set[int] | None = None, always_fail: bool = False, **options: Any,
) -> BaseWorker:
    """A worker of SERVICE with ``partitions`` partitions counting what it handles."""
    worker = BaseWorker(
        make_settings(service_name=SERVICE, partitions={SERVICE: partitions}),
        worker_settings=fast_worker_settings(**options),
    )
    failing = set(fail_first or ())

    @worker.handler("parts.job.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        if always_fail:
            raise RuntimeError("always fails")
        if data["i"] in failing:
            failing.discard(data["i"])
            raise RuntimeError("fails once")
        seen[data["i"]] += 1

    return worker


def test_key_layout_and_hash_rule() -> None:
    """Partition 0 keeps the service's keys; partition k has the hash tag {service.pk};
    parse() reads it back; an ordering key's partition is CRC-32 of its bytes mod N."""
    assert QM.get_partition_stream("orders", 0) == "actionbus:dev:{orders}:streams:main"
    assert QM.get_partition_stream("orders", 2) == "actionbus:dev:{orders.p2}:streams:main"
    assert QM.get_ordered_stream("orders", 1) == "actionbus:dev:{orders.p1}:streams:ordered"
    assert QM.get_delayed_set("orders", partition=2) == "actionbus:dev:{orders.p2}:delayed:main"
    assert QM.get_partitions_key("orders") == "actionbus:dev:{orders}:partitions:main"
    parts = QM.parse("actionbus:dev:{orders.p2}:streams:main")
    assert (parts.service, parts.partition, parts.context) == ("orders", 2, "main")
    assert QM.parse("actionbus:dev:{orders}:streams:main").partition == 0
    for bad in ("{orders.p0}", "{orders.p01}", "{orders.p64}", "{orders.px}"):
        with pytest.raises(InvalidNameError):
            QM.parse(f"actionbus:dev:{bad}:streams:main")
    with pytest.raises(InvalidNameError):  # callbacks go to a service's own main stream
        QM.check_action_stream("actionbus:dev:{orders.p1}:streams:main")
    assert partition_for_key("order-42", 1_000_000_000_000) == 1475806942
    assert partition_for_key("order-42", 3) == 1475806942 % 3


def test_partition_count_is_checked(make_settings: Callable[..., CommonAppSettings]) -> None:
    """partitions must be 1..64 per service; lanes and partitions do not combine."""
    with pytest.raises(ValueError, match="from 1 to 64"):
        make_settings(partitions={SERVICE: 0})
    with pytest.raises(ValueError, match="not a service name"):
        make_settings(partitions={"a:b": 2})
    with pytest.raises(ConfigurationError, match="lanes and partitions"):
        BaseWorker(make_settings(service_name=SERVICE, partitions={SERVICE: 2}),
                   worker_settings=fast_worker_settings(lanes=True))


async def test_one_partition_keeps_todays_keys(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """partitions=1: sends go to the main stream and no partition key is created."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 1, seen)
    await worker.start()
    client = bus.client("caller")
    await client.send_actions_async([job(i) for i in range(10)])
    await eventually(lambda: len(seen) == 10)
    keys = {k.decode() async for k in bus.redis.scan_iter(match="*{parts.p*")}
    assert keys == set()
    assert await bus.redis.xlen(streams(1)[0]) == 10


async def test_sends_spread_evenly_and_each_is_handled_once(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """With partitions=3 unordered sends go round robin over the 3 streams; one worker
    handles every action exactly once and announces the count."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 3, seen, concurrency=8)
    await worker.start()
    assert await bus.redis.get(QM.get_partitions_key(SERVICE)) == b"3"
    client = bus.client("caller", partitions={SERVICE: 3})
    await client.send_actions_async([job(i) for i in range(60)])
    for i in range(60, 90):
        await client.send_action_async(job(i))
    await eventually(lambda: len(seen) == 90)
    assert [await bus.redis.xlen(s) for s in streams(3)] == [30, 30, 30]
    assert set(seen.values()) == {1}


async def test_partition_readers_waiting_for_a_slot_are_woken(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """With one slot shared by two partitions, a partition reader that found no free slot
    is woken when an action finishes: every action is handled."""
    worker = BaseWorker(make_settings(service_name=SERVICE, partitions={SERVICE: 2}),
                        worker_settings=fast_worker_settings(concurrency=1))
    seen: Counter[int] = Counter()

    @worker.handler("parts.job.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        await asyncio.sleep(0.005)  # holds the slot across loop turns
        seen[data["i"]] += 1

    await worker.start()
    client = bus.client("caller", partitions={SERVICE: 2})
    await client.send_actions_async([job(i) for i in range(20)])
    await eventually(lambda: len(seen) == 20)
    assert set(seen.values()) == {1}


async def test_sender_follows_the_workers_count_and_reports_a_mismatch(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender whose settings say 2 partitions while the workers read 3 logs a warning
    and sends as the workers read (3 streams), never splitting another way; each time it
    reads the count again (its cache expired) the mismatch is counted, the warning not
    repeated."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 3, seen)
    await worker.start()
    client = bus.client("caller", partitions={SERVICE: 2}, lanes_cache_s=0.05)
    with caplog.at_level(logging.WARNING, logger="actionbus.client"):
        await client.send_actions_async([job(i) for i in range(30)])
        assert client._partitions.mismatches == 1
        await asyncio.sleep(0.1)  # the cached count expires: the next send reads it again
        await client.send_actions_async([job(i) for i in range(30, 33)])
    assert caplog.text.count("read 3 partition(s) but settings.partitions says 2") == 1
    assert client._partitions.mismatches == 2
    await eventually(lambda: len(seen) == 33)
    lengths = [await bus.redis.xlen(s) for s in streams(3)]
    assert sum(lengths) == 33
    assert min(lengths) >= 10  # the first 30 split 10/10/10 over the workers' 3 streams


async def test_leftover_partitions_are_drained_when_the_count_shrinks(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Drain-and-switch 3 -> 1 -> 2: actions written under 3 partitions (no worker up) are
    all handled by a worker started with partitions=1, which reads the old partitions;
    then 2 partitions: nothing lost, nothing twice."""
    client = bus.client("caller", partitions={SERVICE: 3})
    await client.send_actions_async([job(i) for i in range(30)])
    seen: Counter[int] = Counter()
    one = make_worker(make_settings, 1, seen)
    await one.start()
    await eventually(lambda: len(seen) == 30)
    await one.stop()
    assert await bus.redis.get(QM.get_partitions_key(SERVICE)) == b"1"
    two = make_worker(make_settings, 2, seen)
    await two.start()
    switched = bus.client("caller2", partitions={SERVICE: 2})
    await switched.send_actions_async([job(i) for i in range(30, 60)])
    await eventually(lambda: len(seen) == 60)
    assert set(seen.values()) == {1}


async def test_a_leftover_partition_appearing_later_is_found(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A running worker (partitions=1) finds partitions written later by a foreign sender
    that uses 3 partitions, warns, and handles their actions."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 1, seen, maintenance_interval_s=0.2)
    await worker.start()
    with caplog.at_level(logging.WARNING, logger="actionbus.worker"):
        for i in range(9):
            await bus.redis.xadd(streams(3)[i % 3], {"data": job(i).model_dump_json()})
        await eventually(lambda: len(seen) == 9)
    assert "partition 1 holds actions but partitions=1" in caplog.text
    assert set(seen.values()) == {1}


async def test_a_retry_returns_to_its_partition_and_dead_letters_are_per_service(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """A failed attempt in partition k is parked in partition k's delayed set and comes
    back to partition k's stream; an action that always fails is dead-lettered."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 3, seen, fail_first={1, 2})
    await worker.start()
    client = bus.client("caller", partitions={SERVICE: 3})
    await client.send_actions_async([job(i) for i in range(3)])  # i -> partition i
    await eventually(lambda: len(seen) == 3)
    for k in (1, 2):  # one original entry and one retried entry each
        assert await bus.redis.xlen(streams(3)[k]) == 2
    assert await bus.redis.xlen(streams(3)[0]) == 1
    await worker.stop()
    dead = make_worker(make_settings, 3, Counter(), always_fail=True, max_deliveries=2)
    await dead.start()
    await client.send_actions_async([job(i) for i in range(3)])
    await eventually(lambda: dead.stats.dead_lettered == 3)

    async def three_letters() -> bool:  # the counter moves before the output round lands
        return len(await dead.dead_letters.list()) == 3

    await eventually(three_letters)
    letters = await dead.dead_letters.list()
    assert sorted(letter.stream for letter in letters) == sorted(streams(3))


async def test_entries_abandoned_in_a_partition_are_reclaimed(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Entries of partition 2 delivered to a consumer that died are reclaimed and handled."""
    client = bus.client("caller", partitions={SERVICE: 3})
    await client.send_actions_async([job(i) for i in range(9)])
    for stream in streams(3):
        await bus.redis.xgroup_create(stream, SERVICE, id="0", mkstream=True)
    taken = await bus.redis.xreadgroup(SERVICE, "dead-one", {streams(3)[2]: ">"}, count=10)
    assert len(taken[0][1]) == 3
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 3, seen, claim_idle_ms=100, reclaim_interval_s=0.1)
    await worker.start()
    await eventually(lambda: len(seen) == 9)
    assert worker.stats.reclaimed == 3
    assert set(seen.values()) == {1}


@pytest.mark.standalone_only("the cluster probe asks each partition's slot in turn")
async def test_probe_on_one_server_is_one_script_call(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker starting on one server looks for leftover partitions with one script call
    (not three commands per possible partition): it finds partition 2 by its stream, 4 by
    its delayed set and 6 by its ordered stream, and only those."""
    from actionbus.workers.partitions import probe

    def no_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the probe sent a pipeline")

    assert await probe(redis_client, QM, SERVICE, 1) == []
    await redis_client.xadd(QM.get_partition_stream(SERVICE, 2), {"data": "{}"})
    await redis_client.zadd(QM.get_delayed_set(SERVICE, partition=4), {"{}": 1})
    await redis_client.xadd(QM.get_ordered_stream(SERVICE, 6), {"data": "{}"})
    await redis_client.xadd(QM.get_partition_stream(SERVICE, 7), {"data": "{}"})
    await redis_client.xtrim(QM.get_partition_stream(SERVICE, 7), maxlen=0)  # empty stream
    monkeypatch.setattr(redis_client, "pipeline", no_pipeline)
    assert await probe(redis_client, QM, SERVICE, 1) == [2, 4, 6]
    assert await probe(redis_client, QM, SERVICE, 3) == [4, 6]
    assert await probe(redis_client, QM, SERVICE, 63) == []


async def test_gone_consumers_are_removed_from_every_partitions_group(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """The partitions' upkeep removes a gone consumer (idle, nothing pending) from the group
    of partition 1's stream, not only from the main stream's."""
    stream = streams(2)[1]
    await bus.redis.xgroup_create(stream, SERVICE, id="0", mkstream=True)
    await bus.redis.xgroup_createconsumer(stream, SERVICE, "gone-one")
    worker = make_worker(make_settings, 2, Counter(), maintenance_interval_s=0.1,
                         consumer_gone_after_s=0.05)
    await worker.start()

    async def gone() -> bool:
        names = {c["name"] for c in await bus.redis.xinfo_consumers(stream, SERVICE)}
        return b"gone-one" not in names

    await eventually(gone, timeout=10)


async def test_a_partition_reader_keeps_to_its_share_of_the_slots(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """concurrency=4 over 3 partitions: partition 1's backlog, arriving first, takes its
    share (2 slots) and no more, so actions arriving later in partition 2 start while
    partition 1's are still running."""
    worker = BaseWorker(make_settings(service_name=SERVICE, partitions={SERVICE: 3}),
                        worker_settings=fast_worker_settings(concurrency=4))
    release = asyncio.Event()
    started: list[int] = []

    @worker.handler("parts.job.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        started.append(data["i"])
        await release.wait()

    await worker.start()
    for i in range(6):
        await bus.redis.xadd(streams(3)[1], {"data": job(i).model_dump_json()})
    await eventually(lambda: len(started) >= 2)
    for i in (100, 101):
        await bus.redis.xadd(streams(3)[2], {"data": job(i).model_dump_json()})
    try:
        await eventually(lambda: {100, 101} <= set(started), timeout=10)
    finally:
        release.set()
    await eventually(lambda: len(started) == 8)


async def test_a_partition_read_redis_refuses_marks_the_worker_unhealthy(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """Partition 1's stream replaced by a string (its reads refused: WRONGTYPE, not an
    outage): the worker is marked unhealthy, the refusal named in its health."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 2, seen)
    await worker.start()
    assert worker.health.healthy
    async with bus.redis.pipeline(transaction=True) as pipe:
        pipe.delete(streams(2)[1])
        pipe.set(streams(2)[1], "not a stream")
        await pipe.execute()
    await eventually(lambda: not worker.health.healthy, timeout=10)
    print(f"health: {worker.health}")
    assert any(streams(2)[1] in problem for problem in worker.health.problems)


async def test_after_large_entries_partition_reads_ask_for_fewer_entries(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any, backend: str
) -> None:
    """Once large entries lowered the worker's read limit, a partition's reads ask for at
    most that many entries too: 30 small entries in partition 1 take many reads, not one."""
    seen: Counter[int] = Counter()
    worker = make_worker(make_settings, 2, seen, batch_size=50, concurrency=100,
                         read_budget_bytes=60_000, block_ms=5_000)
    await worker.start()
    big = job(-1).model_copy(update={"data": {"i": -1, "pad": "y" * 20_000}})
    await bus.redis.xadd(streams(2)[0], {"data": big.model_dump_json()})
    await eventually(lambda: seen[-1] == 1)
    assert worker._processor is not None
    limit = worker._processor.read_limit
    assert 1 <= limit <= 3
    stream = streams(2)[1]
    node = {"target_nodes": bus.redis.get_node_from_key(stream)} if backend == "cluster" else {}

    async def reads() -> int:
        stats: Any = await bus.redis.info("commandstats", **node)
        return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))

    before = await reads()
    async with bus.redis.pipeline(transaction=False) as pipe:
        for i in range(30):
            pipe.xadd(stream, {"data": job(i).model_dump_json()})
        await pipe.execute()
    await eventually(lambda: len(seen) == 31, timeout=10)
    taken = await reads() - before
    print(f"read limit {limit}; XREADGROUP calls for 30 entries: {taken}")
    assert taken >= 30 // limit  # one read of 50 would have taken them all at once


@pytest.mark.standalone_only("pauses the one server (CLIENT PAUSE)")
async def test_a_stalled_partition_read_counts_as_a_slow_command(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any,
    redis_server: Any,
) -> None:
    """Redis stalled longer than the socket timeout while every reader waits: each
    partition reader's slow read, not only the main stream's, counts in the worker's
    health.slow_commands."""
    partitions = 5
    worker = BaseWorker(
        make_settings(service_name=SERVICE, partitions={SERVICE: partitions},
                      redis_socket_timeout=1.0),
        worker_settings=fast_worker_settings(),
    )

    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        pass

    worker.register("parts.job.run", run)
    await worker.start()
    assert worker.health.slow_commands == 0
    with redis_server.client() as admin:
        admin.execute_command("CLIENT", "PAUSE", 2500, "ALL")
    await eventually(lambda: worker.health.slow_commands >= partitions, timeout=15)
    print(f"health: {worker.health}")


async def test_a_priority_batch_relearns_an_expired_count_while_the_lanes_are_cached(
    bus: Any, eventually: Any
) -> None:
    """The partition count learnt before the lanes: a priority batch sent once the count
    expired, while the lanes (none) are still cached, learns the count again (the workers
    now read 3 partitions) instead of sending by the expired one."""
    client = bus.client("caller", lanes_cache_s=3.0)
    await client.send_action_async(job(0))  # learns the count (1), not the lanes
    await asyncio.sleep(1.5)
    await client.send_action_async(job(1), priority="high")  # learns the lanes (none)
    await bus.redis.set(QM.get_partitions_key(SERVICE), "3")
    await eventually(lambda: client._partitions.stale(SERVICE), timeout=5)  # count expired
    assert not client._router.stale(SERVICE)  # the lanes still cached: the case under test
    await client.send_actions_async([job(i) for i in range(2, 5)], priority="high")
    assert [await bus.redis.xlen(s) for s in streams(3)][1:] == [1, 1]


async def test_a_sender_follows_an_announced_count_at_both_ends_of_its_range(
    bus: Any,
) -> None:
    """A descriptor announcing 1 partition (while the settings say 3) sends everything to
    the main stream, and one announcing the largest count (64, settings say 1) spreads the
    sends from partition 0 on: both ends of the range are counts the sender follows."""
    one, most = "parts1", "parts64"
    await bus.redis.set(QM.get_partitions_key(one), "1")
    await bus.redis.set(QM.get_partitions_key(most), str(MAX_PARTITIONS))
    client = bus.client("caller", partitions={one: 3})
    await client.send_actions_async(
        [DomainAction(action_type=f"{one}.job.run", data={"i": i}) for i in range(3)]
        + [DomainAction(action_type=f"{most}.job.run", data={"i": i}) for i in range(2)])
    assert [await bus.redis.xlen(s) for s in QM.get_partition_streams(one, 3)] == [3, 0, 0]
    assert [await bus.redis.xlen(s) for s in QM.get_partition_streams(most, 3)] == [1, 1, 0]


async def test_a_failed_descriptor_read_keeps_the_count_last_learnt(
    redis_client: Any, make_settings: Callable[..., CommonAppSettings],
) -> None:
    """PartitionRouter.refresh returns the count to use: when the descriptor cannot be
    read (here: the key holds a hash, GET fails), the count learnt before, else the
    settings' count."""
    key = QM.get_partitions_key(SERVICE)
    router = PartitionRouter(redis_client, QM, make_settings(partitions={SERVICE: 2}))
    await redis_client.hset(key, "not", "a count")
    assert await router.refresh(SERVICE) == 2  # nothing learnt yet: the settings
    await redis_client.delete(key)
    await redis_client.set(key, "3")
    assert await router.refresh(SERVICE) == 3
    await redis_client.delete(key)
    await redis_client.hset(key, "not", "a count")
    assert await router.refresh(SERVICE) == 3
    assert router.count(SERVICE) == 3


async def test_a_target_whose_count_cannot_be_read_gets_everything_on_its_main_stream(
    bus: Any,
) -> None:
    """A target absent from settings.partitions whose descriptor cannot be read (the key
    holds a hash: GET fails) is sent to as one partition: every action on its main stream."""
    await bus.redis.hset(QM.get_partitions_key(SERVICE), "not", "a count")
    client = bus.client("caller")
    await client.send_actions_async([job(i) for i in range(2)])
    await client.send_action_async(job(2))
    assert [await bus.redis.xlen(s) for s in streams(2)] == [3, 0]


async def test_sends_to_two_partitions_alternate_between_their_streams(bus: Any) -> None:
    """A target of 2 partitions (settings; no descriptor) gets its sends in turn on
    partition 0 (its main stream) and partition 1, one by one and in a batch."""
    client = bus.client("caller", partitions={SERVICE: 2})
    await client.send_action_async(job(0))
    await client.send_action_async(job(1))
    await client.send_actions_async([job(i) for i in range(2, 6)])
    sent = [[json.loads(f[b"data"])["data"]["i"] for _, f in await bus.redis.xrange(s)]
            for s in streams(2)]
    assert sent == [[0, 2, 4], [1, 3, 5]]


async def test_the_announced_partition_count_is_refreshed_every_third_of_its_ttl(
    bus: Any, make_settings: Callable[..., CommonAppSettings], eventually: Any
) -> None:
    """With lanes_ttl_s=3 (maintenance every 60 s) a partitioned worker refreshes the
    announced count within about a second: its remaining time goes back up instead of
    running out."""
    worker = make_worker(make_settings, 2, Counter(), lanes_ttl_s=3,
                         maintenance_interval_s=60)
    await worker.start()
    key = QM.get_partitions_key(SERVICE)
    seen: list[int] = []

    async def refreshed() -> bool:  # a reading well above the one before it: a refresh
        seen.append(int(await bus.redis.pttl(key)))
        return any(later > earlier + 100 for earlier, later in itertools.pairwise(seen))

    await eventually(refreshed, timeout=5)
    assert await bus.redis.get(key) == b"2"
