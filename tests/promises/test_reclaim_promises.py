"""README promises about reclaiming: XCLAIM's min-idle, and deliveries by crashed workers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from actionbus import DomainAction, QueueManager
from actionbus.embedded import RedisServer

from .conftest import wait_for
from .proxy import HoldingProxy

pytestmark = pytest.mark.backends


async def _pending_on_ghost(
    redis: Redis, qm: QueueManager, service: str, *, deliveries: int, idle_ms: int
) -> tuple[str, str]:
    """An action pending on a dead consumer ``ghost`` with a known delivery count and idle."""
    stream = qm.get_service_action_stream(service)
    await redis.xgroup_create(stream, service, id="0", mkstream=True)
    action = DomainAction(action_type=f"{service}.op.run")
    entry_id = (await redis.xadd(stream, {"data": action.model_dump_json()})).decode()
    await redis.xreadgroup(service, "ghost", {stream: ">"}, count=1)
    await redis.xclaim(stream, service, "ghost", 0, [entry_id], idle=idle_ms,
                       retrycount=deliveries)
    return stream, entry_id


async def _dead_fields(redis: Redis, qm: QueueManager, service: str) -> dict[str, str]:
    [(_, fields)] = await redis.xrange(qm.get_dead_letter_stream(service))
    return {k.decode(): v.decode() for k, v in fields.items()}


async def test_reclaimed_at_max_deliveries_minus_one_gets_exactly_one_attempt(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """An entry a crashed worker held for delivery max-1 gets one attempt more, then is buried."""
    _, entry_id = await _pending_on_ghost(bus.redis, qm, "recl", deliveries=2, idle_ms=120_000)
    worker = make_worker("recl", max_deliveries=3, claim_idle_ms=60_000)
    calls: list[str] = []

    @worker.handler("recl.op.run")
    async def fail(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(str(action.action_id))
        raise RuntimeError("still broken")

    await worker.start()
    await wait_for(lambda: bus.redis.xlen(qm.get_dead_letter_stream("recl")), "a dead letter")
    fields = await _dead_fields(bus.redis, qm, "recl")
    assert len(calls) == 1
    assert (fields["original_id"], fields["reason"], fields["deliveries"]) == (
        entry_id, "max_deliveries", "3")


async def test_reclaimed_at_max_deliveries_is_buried_without_a_handler_call(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """An entry already delivered max_deliveries times by crashed workers is buried unrun."""
    _, entry_id = await _pending_on_ghost(bus.redis, qm, "aband", deliveries=3, idle_ms=120_000)
    worker = make_worker("aband", max_deliveries=3, claim_idle_ms=60_000)
    calls: list[str] = []

    @worker.handler("aband.op.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(str(action.action_id))

    await worker.start()
    await wait_for(lambda: bus.redis.xlen(qm.get_dead_letter_stream("aband")), "a dead letter")
    fields = await _dead_fields(bus.redis, qm, "aband")
    assert calls == []
    assert (fields["original_id"], fields["error_type"], fields["deliveries"]) == (
        entry_id, "Abandoned", "4")


@pytest.mark.standalone_only("a TCP proxy in front of one server holds XCLAIM; a cluster "
                             "client follows the nodes' own addresses around it")
async def test_xclaim_min_idle_keeps_an_entry_another_worker_just_claimed(
    redis_server: RedisServer, bus: Any, make_worker: Any, make_settings: Any,
    qm: QueueManager,
) -> None:
    """A worker whose XPENDING saw an entry as abandoned does not take it once another worker
    claimed it in between: XCLAIM's min-idle refuses (a race made deterministic by a proxy)."""
    stream, entry_id = await _pending_on_ghost(
        bus.redis, qm, "race", deliveries=1, idle_ms=120_000)
    seen: list[str] = []
    async with HoldingProxy(redis_server.port, b"XCLAIM") as proxy:
        worker = make_worker(
            "race", app={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"}, redis=None,
            claim_idle_ms=60_000,
        )

        @worker.handler("race.op.run")
        async def run(action: DomainAction, data: dict[str, Any]) -> None:
            seen.append(str(action.correlation_id or action.action_id))

        await worker.start()
        await asyncio.wait_for(proxy.held.wait(), 10)  # its XPENDING listed the entry
        await bus.redis.xclaim(stream, "race", "alive", 0, [entry_id])  # the other worker wins
        proxy.release.set()
        await bus.client("caller").send_action_async(
            DomainAction(action_type="race.op.run", correlation_id="marker"))
        await wait_for(lambda: "marker" in seen, "the marker was handled")
        await worker.stop(grace=0.5)
    assert seen == ["marker"]
    [pending] = await bus.redis.xpending_range(stream, "race", min="-", max="+", count=10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"alive", 2)


async def test_heartbeats_keep_a_slow_action_alive_without_counting_deliveries(
    bus: Any, make_worker: Any
) -> None:
    """A handler running for many heartbeats keeps its entry fresh (idle reset) while the
    entry's delivery count stays 1: a heartbeat is not a delivery."""
    worker = make_worker("beat", claim_idle_ms=300, max_deliveries=2)
    started, release = asyncio.Event(), asyncio.Event()

    @worker.handler("beat.op.run")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    await worker.start()
    await bus.client("caller").send_action_async(DomainAction(action_type="beat.op.run"))
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    since = loop.time()

    async def refreshed() -> Any:
        [entry] = await bus.redis.xpending_range(worker.stream, worker.group, "-", "+", 1)
        # Running for 4x claim_idle_ms yet idle for less than it: heartbeats happened.
        return entry if loop.time() - since > 1.2 and entry["time_since_delivered"] < 300 \
            else None

    entry = await wait_for(refreshed, "a heartbeat after four claim_idle_ms")
    release.set()
    assert entry["times_delivered"] == 1
