"""Claiming (workers/reclaim.py): abandoned entries, our own lost deliveries, retries."""

from __future__ import annotations

from typing import Any

import pytest

from actionbus.workers.reclaim import claim_abandoned, claim_own_pending, reclaim_for_retry
from tests.workers.helpers import QM

pytestmark = pytest.mark.backends

STREAM = QM.get_service_action_stream("inventory")
GROUP = "inventory"


async def _delivered(redis: Any, consumer: str, n: int) -> list[str]:
    """Add ``n`` entries and deliver them all to ``consumer`` (which never acks)."""
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [(await redis.xadd(STREAM, {"data": "{}"})).decode() for _ in range(n)]
    await redis.xreadgroup(GROUP, consumer, {STREAM: ">"})
    return ids


async def test_abandoned_entries_go_to_one_claimer_only(redis_client: Any) -> None:
    """Only entries idle for min_idle_ms are claimed, each by the first claimer, skip honoured."""
    ids = await _delivered(redis_client, "ghost", 3)
    kept = await claim_abandoned(redis_client, STREAM, GROUP, "a", min_idle_ms=3_600_000,
                                 count=10, skip=())
    assert kept == []  # nothing has been idle for an hour
    first = await claim_abandoned(redis_client, STREAM, GROUP, "a", min_idle_ms=0, count=10,
                                  skip={ids[2]})
    assert [(c.entry_id, c.deliveries, c.previous_consumer) for c in first] == [
        (ids[0], 2, "ghost"), (ids[1], 2, "ghost")]
    # The claim reset their idle time: a racing claimer with a real threshold gets nothing.
    second = await claim_abandoned(redis_client, STREAM, GROUP, "b", min_idle_ms=60_000,
                                   count=10, skip=())
    assert second == []


async def test_own_pending_entries_are_resumed_except_busy_ones(redis_client: Any) -> None:
    """Entries a lost read delivered to us come back, minus those in progress or acked soon."""
    ids = await _delivered(redis_client, "me", 3)
    claimed = await claim_own_pending(redis_client, STREAM, GROUP, "me", count=10,
                                      skip={ids[0]})
    assert [(c.entry_id, c.deliveries) for c in claimed] == [(ids[1], 2), (ids[2], 2)]
    assert await claim_own_pending(redis_client, STREAM, GROUP, "other", count=10,
                                   skip=()) == []


async def test_reclaim_for_retry_counts_a_delivery_or_sees_the_entry_gone(
    redis_client: Any,
) -> None:
    """Before a retry the entry's delivery count rises; a deleted entry reports False."""
    [entry_id] = await _delivered(redis_client, "me", 1)
    assert await reclaim_for_retry(redis_client, STREAM, GROUP, "me", entry_id) is True
    [pending] = await redis_client.xpending_range(STREAM, GROUP, "-", "+", 1)
    assert pending["times_delivered"] == 2
    await redis_client.xdel(STREAM, entry_id)
    assert await reclaim_for_retry(redis_client, STREAM, GROUP, "me", entry_id) is False


async def test_abandoned_claim_asks_xpending_only_for_idle_entries(redis_client: Any) -> None:
    """``count`` applies to entries already idle for min_idle_ms: a fresh entry ahead of an
    idle one does not use up the count and hide the idle one, which comes with its fields."""
    fresh, idle = await _delivered(redis_client, "ghost", 2)
    # Make the second entry idle for an hour without waiting (XCLAIM ... IDLE).
    await redis_client.xclaim(STREAM, GROUP, "ghost", 0, [idle], idle=3_600_000, retrycount=1)
    claimed = await claim_abandoned(redis_client, STREAM, GROUP, "a", min_idle_ms=60_000,
                                    count=1, skip=())
    assert [(c.entry_id, c.deliveries, c.previous_consumer, c.fields) for c in claimed] == [
        (idle, 2, "ghost", {b"data": b"{}"})]
    [pending_fresh] = await redis_client.xpending_range(STREAM, GROUP, fresh, fresh, 1)
    assert pending_fresh["consumer"] == b"ghost"


async def test_own_pending_count_applies_after_skipping_busy_entries(redis_client: Any) -> None:
    """Entries in ``skip`` do not use up ``count``: with count=1 and the oldest entry busy,
    the next one is resumed, with its fields."""
    ids = await _delivered(redis_client, "me", 3)
    claimed = await claim_own_pending(redis_client, STREAM, GROUP, "me", count=1,
                                      skip={ids[0]})
    assert [(c.entry_id, c.deliveries, c.fields) for c in claimed] == [
        (ids[1], 2, {b"data": b"{}"})]


async def test_a_workers_first_reclaim_is_offset_by_its_consumer_name(
    bus: Any, eventually: Any
) -> None:
    """Workers started together do not reclaim in lockstep: the first reclaim of each comes
    reclaim_interval_s (4 s) times a fraction fixed by its consumer name. A worker named
    "late-34" (0.97: its first reclaim near 3.9 s) started first, then one named "early-14"
    (0.05: near 0.2 s): the abandoned entry goes to the second."""
    service = "offset"
    stream = QM.get_service_action_stream(service)
    await bus.redis.xgroup_create(stream, service, id="0", mkstream=True)
    await bus.redis.xadd(stream, {"data": '{"action_type": "offset.item.run"}'})
    await bus.redis.xreadgroup(service, "dead", {stream: ">"})  # delivered to a dead worker
    handled: list[str] = []
    workers = []
    for name in ("late-34", "early-14"):
        worker = bus.worker(service, consumer_name=name, reclaim_interval_s=4,
                            claim_idle_ms=100)

        async def run(action: Any, data: Any, name: str = name) -> None:
            handled.append(name)

        worker.register("offset.item.run", run)
        workers.append(worker)
    for worker in workers:
        await worker.start()
    await eventually(lambda: handled != [], timeout=3.5)
    assert handled == ["early-14"]


def test_first_reclaim_offsets_spread_over_the_whole_interval() -> None:
    """The fraction of ``reclaim_interval_s`` that offsets each worker's first reclaim is in
    [0, 1) and, over 1,000 consumer names, covers the whole range (below 0.05 and above
    0.95 both occur; each tenth holds 5-15% of the names), so workers started together
    reclaim across the interval, not bunched in one part of it."""
    from actionbus.workers.reader import spread

    fractions = [spread(f"worker-{i}") for i in range(1000)]
    assert all(0.0 <= f < 1.0 for f in fractions)
    assert min(fractions) < 0.05
    assert max(fractions) > 0.95
    tenths = [sum(int(f * 10) == k for f in fractions) for k in range(10)]
    assert all(50 <= n <= 150 for n in tenths), tenths
