"""Priority lanes: urgent work passes bulk work; every guarantee holds in every lane."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest

from actionbus import ActionRejected, DeadLetterQueue, DomainAction, DomainActionResponse
from actionbus.dead_letters import dead_letter_fields
from actionbus.models.actions import utc_now
from actionbus.workers.context import entry_key, split_entry_key
from actionbus.workers.upkeep import trim
from tests.workers.helpers import QM

pytestmark = pytest.mark.backends

HIGH = QM.get_lane_stream("lanes", "high")
MAIN = QM.get_service_action_stream("lanes")
LOW = QM.get_lane_stream("lanes", "low")


def raw_action(n: int, kind: str = "bulk") -> str:
    """An action's JSON as a foreign producer writes it."""
    return DomainAction(action_type=f"lanes.item.{kind}", data={"n": n}).model_dump_json()


async def test_urgent_entries_sent_after_a_backlog_are_handled_first(
    bus: Any, eventually: Any
) -> None:
    """priority='high' actions sent behind a bulk backlog are handled before the backlog."""
    worker = bus.worker("lanes", lanes=True, lane_mode="strict", concurrency=1)
    order: list[str] = []
    first = asyncio.Event()
    release = asyncio.Event()

    @worker.handler("lanes.item.bulk")
    async def bulk(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(f"bulk{data['n']}")
        first.set()
        await release.wait()

    @worker.handler("lanes.item.urgent")
    async def urgent(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(f"urgent{data['n']}")

    await worker.start()
    client = bus.client("orders")
    await client.send_actions_async(
        [DomainAction(action_type="lanes.item.bulk", data={"n": n}) for n in range(30)])
    await asyncio.wait_for(first.wait(), 5)
    await client.send_actions_async(
        [DomainAction(action_type="lanes.item.urgent", data={"n": n}) for n in range(5)],
        priority="high",
    )
    release.set()
    await eventually(lambda: len(order) == 35)
    assert order[0] == "bulk0"
    assert order[1:6] == [f"urgent{n}" for n in range(5)]
    assert await bus.redis.xlen(HIGH) == 5


async def test_weighted_mode_gives_the_lowest_lane_its_share(bus: Any, eventually: Any) -> None:
    """With a full high lane, the weighted default still hands the low lane some reads
    (raw XADDs to the documented lane keys, as a foreign sender would)."""
    for n in range(40):
        await bus.redis.xadd(HIGH, {"data": raw_action(n, "urgent")})
        await bus.redis.xadd(LOW, {"data": raw_action(n, "bulk")})
    worker = bus.worker("lanes", lanes=True, concurrency=1)
    order: list[str] = []

    @worker.handler("lanes.item.bulk")
    async def bulk(action: DomainAction, data: dict[str, Any]) -> None:
        order.append("low")

    @worker.handler("lanes.item.urgent")
    async def urgent(action: DomainAction, data: dict[str, Any]) -> None:
        order.append("high")

    await worker.start()
    await eventually(lambda: len(order) >= 30)
    assert 2 <= order[:30].count("low") <= 10  # 1 of every 10 reads with weights 6/3/1
    await eventually(lambda: len(order) == 80)  # and everything in the end


async def test_pseudo_sync_uses_the_high_lane_of_a_lane_reading_service(bus: Any) -> None:
    """Without priority=, a pseudo-sync call goes to the high lane when the target reads lanes."""
    worker = bus.worker("lanes", lanes=True)

    @worker.handler("lanes.item.ask")
    async def ask(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    await worker.start()
    reply = await bus.client("orders").send_action_pseudo_sync(
        DomainAction(action_type="lanes.item.ask"), timeout=5)
    assert reply is not None
    assert reply.success
    assert await bus.redis.xlen(HIGH) == 1
    assert await bus.redis.xlen(MAIN) == 0


@pytest.mark.parametrize("priority", [None, "high"])
async def test_pseudo_sync_to_a_main_only_service_uses_its_main_stream(
    bus: Any, priority: str | None
) -> None:
    """A service answering from the main stream only (a raw responder) keeps answering,
    whether the call names no priority (the high-lane default) or priority='high'."""
    redis = bus.redis

    async def responder() -> None:
        last = "0"
        while True:
            reply = await redis.xread({MAIN: last}, count=10, block=100)
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    action = DomainAction.model_validate_json(fields[b"data"])
                    response = DomainActionResponse.for_action(action, data={"raw": True})
                    assert action.callback_queue_name is not None
                    await redis.lpush(action.callback_queue_name, response.model_dump_json())

    task = asyncio.create_task(responder())
    try:
        reply = await bus.client("orders").send_action_pseudo_sync(
            DomainAction(action_type="lanes.item.ask"), timeout=5, priority=priority)
    finally:
        task.cancel()
    assert reply is not None
    assert reply.data == {"raw": True}
    assert not await redis.exists(HIGH)


async def test_a_failed_lane_entry_is_retried_in_its_lane(bus: Any, eventually: Any) -> None:
    """A retry of a high-lane action goes back to the high lane (through its delayed set)."""
    worker = bus.worker("lanes", lanes=True)
    attempts: list[int] = []

    @worker.handler("lanes.item.flaky")
    async def flaky(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("once")

    await worker.start()
    await bus.client("orders").send_action_async(
        DomainAction(action_type="lanes.item.flaky"), priority="high")
    await eventually(lambda: worker.stats.handled == 1)
    assert len(attempts) == 2
    assert await bus.redis.xlen(HIGH) == 2  # the first delivery and the retry
    assert await bus.redis.xlen(MAIN) == 0


async def test_a_lane_entry_counts_its_first_read_as_its_first_delivery(
    bus: Any, eventually: Any
) -> None:
    """A high-lane action that always fails is attempted max_deliveries times (its first
    read counts as delivery 1, as on the main stream), then buried with that count."""
    worker = bus.worker("lanes", lanes=True, max_deliveries=3)
    attempts: list[int] = []

    @worker.handler("lanes.item.broken")
    async def broken(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        raise RuntimeError("always")

    await worker.start()
    await bus.client("orders").send_action_async(
        DomainAction(action_type="lanes.item.broken"), priority="high")
    await eventually(lambda: worker.stats.dead_lettered == 1)

    async def written() -> bool:
        return bool(await worker.dead_letters.list())

    await eventually(written)
    [letter] = await worker.dead_letters.list()
    assert len(attempts) == 3
    assert letter.deliveries == 3


async def test_a_lane_entry_is_dead_lettered_with_its_lane(bus: Any, eventually: Any) -> None:
    """A buried low-lane action lands in the service's one dead stream, naming its lane."""
    worker = bus.worker("lanes", lanes=True)

    @worker.handler("lanes.item.bad")
    async def bad(action: DomainAction, data: dict[str, Any]) -> None:
        raise ActionRejected("no")

    await worker.start()
    entry_id = await bus.client("orders").send_action_async(
        DomainAction(action_type="lanes.item.bad"), priority="low")
    await eventually(lambda: worker.stats.dead_lettered == 1)

    async def written() -> bool:  # counted when queued; listed once its round landed
        return bool(await worker.dead_letters.list())

    await eventually(written)
    [letter] = await worker.dead_letters.list()
    assert letter.stream == LOW
    assert letter.original_id == entry_id

    async def acked() -> bool:  # the ack follows the dead letter's write round
        return (await bus.redis.xpending(LOW, "lanes"))["pending"] == 0

    await eventually(acked)


async def test_entries_left_by_a_stopped_worker_are_reclaimed_in_every_lane(
    bus: Any, eventually: Any
) -> None:
    """Entries of each lane left pending by a worker that stopped mid-drain are reclaimed
    by another worker and handled, none lost (equal entry ids in two lanes included)."""
    hang = asyncio.Event()
    seen: list[tuple[str, int]] = []
    first = bus.worker("lanes", lanes=True, consumer_name="first")

    @first.handler("lanes.item.bulk")
    async def stuck(action: DomainAction, data: dict[str, Any]) -> None:
        await hang.wait()

    for n, stream in enumerate((HIGH, MAIN, LOW)):
        await bus.redis.xadd(stream, {"data": raw_action(n)}, id="1-1")
    await first.start()
    await eventually(lambda: first.in_flight == 3)
    await first.stop(grace=0)
    second = bus.worker("lanes", lanes=True, consumer_name="second", claim_idle_ms=100,
                        reclaim_interval_s=0.1)

    @second.handler("lanes.item.bulk")
    async def handled(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(("lane", data["n"]))

    await second.start()
    await eventually(lambda: len(seen) == 3)
    assert sorted(n for _, n in seen) == [0, 1, 2]
    for stream in (HIGH, MAIN, LOW):
        assert (await bus.redis.xpending(stream, "lanes"))["pending"] == 0


async def test_reclaim_fills_the_free_slots_lane_by_lane_and_counts_each_entry(
    bus: Any, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With 3 free slots and 5 abandoned entries (2 high, 2 normal, 1 low), one reclaim takes
    both high ones, then one normal one, counts 3 in stats.reclaimed and logs each."""
    hang = asyncio.Event()

    async def stuck(action: DomainAction, data: dict[str, Any]) -> None:
        await hang.wait()

    first = bus.worker("lanes", lanes=True, consumer_name="first")
    first.register("lanes.item.bulk", stuck)
    for stream, n in ((HIGH, 2), (MAIN, 2), (LOW, 1)):
        for i in range(n):
            await bus.redis.xadd(stream, {"data": raw_action(i)}, id=f"1-{i + 1}")
    await first.start()
    await eventually(lambda: first.in_flight == 5)
    await first.stop(grace=0)
    second = bus.worker("lanes", lanes=True, consumer_name="second", concurrency=3,
                        claim_idle_ms=100, reclaim_interval_s=0.1)
    second.register("lanes.item.bulk", stuck)
    with caplog.at_level(logging.INFO, logger="actionbus.worker"):
        await second.start()
        await eventually(lambda: second.in_flight == 3)  # no slot left: no further reclaim
    assert second.stats.reclaimed == 3

    async def owners(stream: str) -> list[str]:
        rows = await bus.redis.xpending_range(stream, "lanes", min="-", max="+", count=10)
        return [r["consumer"].decode() for r in rows]

    assert await owners(HIGH) == ["second", "second"]
    assert await owners(MAIN) == ["second", "first"]
    assert await owners(LOW) == ["first"]
    assert "reclaimed 1-1 from first (delivery 2)" in caplog.text
    hang.set()


async def test_lanes_descriptor_is_kept_alive(bus: Any) -> None:
    """A lane-reading worker announces its lanes in the documented descriptor key."""
    worker = bus.worker("lanes", lanes=True, lanes_ttl_s=10)
    await worker.start()
    key = QM.get_lanes_key("lanes")
    assert json.dumps((await bus.redis.get(key)).decode()) == '"high,normal,low"'
    assert 0 < await bus.redis.ttl(key) <= 10


async def test_delayed_send_with_priority_waits_in_its_lanes_set(
    bus: Any, eventually: Any
) -> None:
    """A delayed send with priority='low' to a service reading lanes waits in the low lane's
    delayed set (the main set stays empty), and when due is handled from the low lane."""
    worker = bus.worker("lanes", lanes=True)
    seen: list[int] = []

    @worker.handler("lanes.item.later")
    async def later(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["n"])

    client = bus.client("orders")
    await worker.start()
    await eventually(lambda: bus.redis.exists(QM.get_lanes_key("lanes")))
    await client.send_action_async(DomainAction(action_type="lanes.item.later", data={"n": 1}),
                                   delay=3600, priority="low")
    await client.send_action_async(DomainAction(action_type="lanes.item.later", data={"n": 2}),
                                   delay=0.05, priority="low")
    assert await bus.redis.zcard(QM.get_delayed_set("lanes", "low")) >= 1
    assert await bus.redis.zcard(QM.get_delayed_set("lanes")) == 0
    await eventually(lambda: seen == [2])
    assert [json.loads(f[b"data"])["data"] for _, f in await bus.redis.xrange(LOW)] == [
        {"n": 2}]


async def test_work_of_the_most_urgent_lane_starts_first_whatever_lane_is_read_first(
    bus: Any, eventually: Any
) -> None:
    """Weighted reads may start with a lower lane (here normal, the heaviest weight); the
    entries of one read cycle still start most urgent lane first."""
    for n in range(5):
        await bus.redis.xadd(MAIN, {"data": raw_action(n, "bulk")})
    await bus.redis.xadd(HIGH, {"data": raw_action(0, "urgent")})
    worker = bus.worker("lanes", lanes=True, lane_weights=(1, 5, 1))
    order: list[str] = []

    @worker.handler("lanes.item.bulk")
    async def bulk(action: DomainAction, data: dict[str, Any]) -> None:
        order.append(f"bulk{data['n']}")

    @worker.handler("lanes.item.urgent")
    async def urgent(action: DomainAction, data: dict[str, Any]) -> None:
        order.append("urgent")

    await worker.start()
    await eventually(lambda: len(order) == 6)
    assert order == ["urgent", *(f"bulk{n}" for n in range(5))]


@pytest.mark.parametrize("lane", ["high", "low"])
async def test_a_delayed_send_enters_its_lane_when_due(
    bus: Any, eventually: Any, lane: str
) -> None:
    """send_action_async(delay=, priority=) to a lane-reading service waits in that lane's
    delayed set, then enters that lane's stream (not the main one) and is handled."""
    await bus.redis.set(QM.get_lanes_key("lanes"), "high,normal,low", ex=60)  # as a worker
    client = bus.client("orders")
    await client.send_action_async(
        DomainAction(action_type="lanes.item.later", data={"n": 1}), delay=0.2, priority=lane)
    assert await bus.redis.zcard(QM.get_delayed_set("lanes", lane)) == 1
    assert await bus.redis.zcard(QM.get_delayed_set("lanes")) == 0
    worker = bus.worker("lanes", lanes=True)
    handled: list[int] = []

    @worker.handler("lanes.item.later")
    async def later(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    await worker.start()
    await eventually(lambda: handled == [1])
    assert await bus.redis.xlen(QM.get_lane_stream("lanes", lane)) == 1
    assert await bus.redis.xlen(MAIN) == 0
    assert await bus.redis.zcard(QM.get_delayed_set("lanes", lane)) == 0


async def test_a_lane_dead_letter_is_replayed_into_its_lane_while_lanes_are_read(
    bus: Any,
) -> None:
    """Replaying a low-lane dead letter puts it back into the low lane while the service's
    lanes descriptor exists, and into the main stream (read by every worker) otherwise."""
    queue = DeadLetterQueue(bus.redis, QM, "lanes")
    dead = QM.get_dead_letter_stream("lanes")

    async def bury(n: int) -> str:
        fields = dead_letter_fields(
            data=raw_action(n), reason="rejected", error_type="ActionRejected",
            error_message="no", deliveries=1, original_id=f"1-{n}", stream=LOW, consumer="c")
        return str((await bus.redis.xadd(dead, fields)).decode())

    unread = await queue.replay(await bury(1))
    assert [entry_id.decode() for entry_id, _ in await bus.redis.xrange(MAIN)] == [unread]
    await bus.redis.set(QM.get_lanes_key("lanes"), "high,normal,low", ex=60)
    read = await queue.replay(await bury(2))
    [(entry_id, fields)] = await bus.redis.xrange(LOW)
    assert entry_id.decode() == read
    assert json.loads(fields[b"data"])["data"] == {"n": 2}
    assert await bus.redis.xlen(dead) == 0


async def test_every_lane_is_trimmed_to_the_retention(bus: Any, eventually: Any) -> None:
    """With stream_retention, maintenance trims the processed entries of each lane."""
    worker = bus.worker("lanes", lanes=True, stream_retention=5)
    handled: list[int] = []

    @worker.handler("lanes.item.bulk")
    async def bulk(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(data["n"])

    for stream in (HIGH, MAIN, LOW):
        for n in range(20):
            await bus.redis.xadd(stream, {"data": raw_action(n)})
    await worker.start()
    await eventually(lambda: len(handled) == 60)

    async def acknowledged() -> bool:
        for stream in (HIGH, MAIN, LOW):
            if (await bus.redis.xpending(stream, "lanes"))["pending"]:
                return False
        return True

    await eventually(acknowledged)
    await worker.maintain()
    assert [await bus.redis.xlen(stream) <= 5 for stream in (HIGH, MAIN, LOW)] == [True] * 3


async def _stuck_lanes(bus: Any, age_s: float) -> list[list[str]]:
    """6 entries per lane, ``age_s`` old by their ids, all acknowledged but the first."""
    start_ms = int((time.time() - age_s) * 1000)
    ids = []
    for stream in (HIGH, MAIN, LOW):
        await bus.redis.xgroup_create(stream, "lanes", id="0", mkstream=True)
        lane = [(await bus.redis.xadd(stream, {"data": raw_action(n)}, id=f"{start_ms}-{n + 1}")
                 ).decode() for n in range(6)]
        await bus.redis.xreadgroup("lanes", "gone", {stream: ">"})
        await bus.redis.xack(stream, "lanes", *lane[1:])
        ids.append(lane)
    return ids


async def test_trim_deletes_past_a_stuck_entry_in_every_lane(bus: Any) -> None:
    """An entry pending for longer than trim_stuck_after_s no longer holds back trimming:
    in each lane the processed entries beyond the retention go, the stuck one stays."""
    ids = await _stuck_lanes(bus, age_s=3600)
    worker = bus.worker("lanes", lanes=True, stream_retention=2, trim_stuck_after_s=60)
    assert await trim(bus.redis, worker.context) == 12  # 4 per lane
    for stream, lane in zip((HIGH, MAIN, LOW), ids, strict=True):
        assert [e[0].decode() for e in await bus.redis.xrange(stream)] == [lane[0], lane[5]]


async def test_trim_waits_trim_stuck_after_s_before_deleting_past_an_entry(bus: Any) -> None:
    """An entry pending for less than trim_stuck_after_s (in seconds) still holds back
    trimming; without trim_stuck_after_s, or without a retention, nothing is trimmed."""
    await _stuck_lanes(bus, age_s=5)
    for settings in ({"stream_retention": 2, "trim_stuck_after_s": 60},
                     {"stream_retention": 2, "trim_stuck_after_s": None},
                     {"stream_retention": None, "trim_stuck_after_s": 0}):
        worker = bus.worker("lanes", lanes=True, **settings)
        assert await trim(bus.redis, worker.context) == 0
    assert [await bus.redis.xlen(stream) for stream in (HIGH, MAIN, LOW)] == [6, 6, 6]


async def test_deadlines_and_idempotency_hold_across_lanes(bus: Any, eventually: Any) -> None:
    """An expired request in the high lane is skipped, not run; an idempotent action sent to
    the high lane and again to the low lane runs once."""
    worker = bus.worker("lanes", lanes=True)
    calls: list[str] = []

    @worker.handler("lanes.item.once", idempotent=True)
    async def once(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append("once")

    @worker.handler("lanes.item.ask")
    async def ask(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append("ask")

    expired = DomainAction(
        action_type="lanes.item.ask", callback_queue_name=QM.get_response_queue("orders", "x"),
        expires_at=utc_now() - timedelta(seconds=1))
    await bus.redis.xadd(HIGH, {"data": expired.model_dump_json()})
    payload = DomainAction(action_type="lanes.item.once").model_dump_json()
    await bus.redis.xadd(HIGH, {"data": payload})
    await worker.start()
    await eventually(lambda: worker.stats.handled == 1 and worker.stats.expired_skipped == 1)
    await bus.redis.xadd(LOW, {"data": payload})
    await eventually(lambda: worker.stats.duplicates_skipped == 1)
    assert calls == ["once"]


async def test_lane_entries_of_one_or_several_fields_reach_the_handler_whole(
    bus: Any, eventually: Any
) -> None:
    """A lane read hands each entry's fields on whole: the usual one "data" field, a
    "data" field with others beside it, and an entry whose one field is not "data" (it has
    no action: dead-lettered as MissingField)."""
    worker = bus.worker("lanes", lanes=True)
    seen: list[int] = []

    @worker.handler("lanes.item.bulk")
    async def bulk(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["n"])

    await bus.redis.xadd(HIGH, {"data": raw_action(1)})
    await bus.redis.xadd(MAIN, {"trace": "t", "data": raw_action(2), "extra": "x"})
    await bus.redis.xadd(LOW, {"payload": raw_action(3)})
    await worker.start()
    letters = DeadLetterQueue(bus.redis, QM, "lanes")
    await eventually(lambda: sorted(seen) == [1, 2])
    await eventually(lambda: worker.stats.dead_lettered == 1)
    [letter] = await letters.list()
    assert letter.error_type == "MissingField"
    assert letter.stream == LOW


def test_entry_keys_are_bare_ids_on_the_main_stream_and_stream_prefixed_in_lanes() -> None:
    """A worker names an entry of its main stream by its id alone, and one of a lane stream
    "<stream> <id>"; split_entry_key gives back (stream, id) for both."""
    main, lane = "actionbus:dev:{s}:streams:main", "actionbus:dev:{s}:streams:high"
    assert entry_key(main, main, "1-0") == "1-0"
    assert entry_key(main, lane, "1-0") == f"{lane} 1-0"
    assert split_entry_key("1-0", main) == (main, "1-0")
    assert split_entry_key(f"{lane} 1-0", main) == (lane, "1-0")


async def test_the_lanes_descriptor_is_refreshed_before_it_lapses(bus: Any) -> None:
    """The lanes descriptor (lanes_ttl_s=3) is refreshed every third of its TTL even when
    the heartbeat period (claim_idle_ms/3 = 20 s) is far longer: watched over three
    refreshes, it never lapses."""
    worker = bus.worker("lanes", lanes=True, lanes_ttl_s=3, claim_idle_ms=60_000,
                        maintenance_interval_s=3600)
    await worker.start()
    key = QM.get_lanes_key("lanes")
    last, refreshes = await bus.redis.pttl(key), 0
    deadline = time.monotonic() + 15
    while refreshes < 3:
        left = await bus.redis.pttl(key)
        assert left > 0, f"the lanes descriptor lapsed after {refreshes} refresh(es)"
        refreshes += left > last
        last = left
        assert time.monotonic() < deadline, f"only {refreshes} refresh(es) in 15 s"
        await asyncio.sleep(0.05)
