"""The inspection API (actionbus/inspect.py): typed state of a service's stream and groups."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import Redis, RedisCluster

from actionbus import ConsumerInfo, LaneInfo, QueueManager, ServiceInfo, inspect_service
from actionbus.inspect import uses_lanes
from tests.ops.helpers import lane_backlog

pytestmark = pytest.mark.backends

QM = QueueManager("dev")
STREAM = QM.get_service_action_stream("inventory")


async def test_inspect_reports_groups_consumers_lag_pending_and_dead_letters(
    redis_client: Any,
) -> None:
    """Length, per-group lag, pending with the oldest's age, consumers and dead letters."""
    old_ms = int(time.time() * 1000) - 60_000
    first = f"{old_ms}-1"
    await redis_client.xadd(STREAM, {"data": "{}"}, id=first)
    await redis_client.xadd(STREAM, {"data": "{}"})
    await redis_client.xadd(STREAM, {"data": "{}"})
    await redis_client.xgroup_create(STREAM, "inventory", id="0")
    await redis_client.xgroup_create(STREAM, "audit", id="$")
    await redis_client.xreadgroup("inventory", "c1", {STREAM: ">"}, count=1)
    await redis_client.xadd(QM.get_dead_letter_stream("inventory"), {"data": "{}"})

    info = await inspect_service(redis_client, QM, "inventory")

    assert isinstance(info, ServiceInfo)
    assert (info.service, info.stream, info.length, info.dead_letters) == (
        "inventory", STREAM, 3, 1)
    groups = {group.name: group for group in info.groups}
    main, audit = groups["inventory"], groups["audit"]
    assert (main.pending, main.lag, main.oldest_pending_id) == (1, 2, first)
    assert main.oldest_pending_age_ms is not None
    assert main.oldest_pending_age_ms >= 60_000
    [consumer] = main.consumers
    assert isinstance(consumer, ConsumerInfo)
    assert (consumer.name, consumer.pending) == ("c1", 1)
    assert consumer.idle_ms >= 0
    assert (audit.pending, audit.lag, audit.oldest_pending_id, audit.consumers) == (
        0, 0, None, [])


async def test_inspect_of_an_unknown_service_is_empty(redis_client: Any) -> None:
    """A service without a stream inspects as zero length, no groups, no dead letters."""
    info = await inspect_service(redis_client, QM, "nobody")
    assert (info.length, info.groups, info.dead_letters) == (0, [], 0)


async def test_inspect_of_a_lane_service_reports_each_lane(
    bus_url: str, backend: str, redis_client: Any
) -> None:
    """A service using lanes gets one LaneInfo per lane (length, waiting, pending, oldest
    pending and waiting ages, groups); the service's figures sum them; consumers() gives a
    consumer once with its pending over every lane."""
    with (RedisCluster if backend == "cluster" else Redis).from_url(bus_url) as redis:
        lane_backlog(redis)
        redis.xreadgroup("inventory", "c1", {QM.get_lane_stream("inventory", "low"): ">"},
                         count=1)  # c1 now has entries pending in two lanes

    info = await inspect_service(redis_client, QM, "inventory")

    assert [(lane.lane, lane.stream) for lane in info.lanes] == [
        ("high", QM.get_lane_stream("inventory", "high")), ("normal", STREAM),
        ("low", QM.get_lane_stream("inventory", "low"))]
    high, normal, low = info.lanes
    assert isinstance(high, LaneInfo)
    assert [(lane.length, lane.waiting, lane.pending) for lane in info.lanes] == [
        (3, 1, 2), (5, 5, 0), (40, 39, 1)]
    assert (info.stream, info.length, info.waiting, info.pending) == (STREAM, 48, 45, 3)
    assert [g.name for g in info.groups] == ["inventory"]  # the main stream's
    assert normal.oldest_pending_age_ms is None
    assert low.oldest_pending_age_ms is not None
    assert low.oldest_pending_age_ms >= 600_000
    assert low.oldest_waiting_age_ms is not None
    assert low.oldest_waiting_age_ms < 600_000  # the first undelivered one came later
    assert high.oldest_waiting_age_ms is not None
    assert high.groups[0].entries_read == 2
    [(group, consumer)] = info.consumers()
    assert (group, consumer.name, consumer.pending, consumer.alive) == ("inventory", "c1", 3, True)


async def test_a_service_uses_lanes_once_a_lane_or_its_descriptor_exists(
    redis_client: Any,
) -> None:
    """Only the main stream: no lanes (and no LaneInfo); the descriptor alone (a worker
    reading lanes, nothing sent yet) or a raw XADD to a lane: lanes."""
    await redis_client.xadd(STREAM, {"data": "{}"})
    assert not await uses_lanes(redis_client, QM, "inventory")
    assert (await inspect_service(redis_client, QM, "inventory")).lanes == []
    await redis_client.set(QM.get_lanes_key("inventory"), "high,normal,low")
    assert await uses_lanes(redis_client, QM, "inventory")
    await redis_client.delete(QM.get_lanes_key("inventory"))
    await redis_client.xadd(QM.get_lane_stream("inventory", "low"), {"data": "{}"})
    info = await inspect_service(redis_client, QM, "inventory")
    assert [(lane.lane, lane.waiting) for lane in info.lanes] == [
        ("high", 0), ("normal", 1), ("low", 1)]
