"""The inspection API (actionbus/inspect.py): typed state of a service's stream and groups."""

from __future__ import annotations

import time
from typing import Any

import pytest

from actionbus import ConsumerInfo, QueueManager, ServiceInfo, inspect_service

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
