"""How a client learns which lanes a target reads: the cached descriptor lookup."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from actionbus import DomainAction, QueueManager
from actionbus.clients.lanes import LaneRouter

pytestmark = pytest.mark.backends

QM = QueueManager()
KEY = QM.get_lanes_key("inventory")


async def test_what_was_learnt_is_trusted_for_cache_s_then_read_again(
    redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A target's lanes are read once and trusted for ``cache_s``: a descriptor that
    disappears meanwhile changes nothing; after ``cache_s`` the next lookup reads it again
    (and finds it gone). Nothing is logged as an error on the way."""
    await redis_client.set(KEY, "high,normal,low")
    router = LaneRouter(redis_client, QM, cache_s=0.3)
    with caplog.at_level(logging.ERROR):
        assert await router.lane("inventory", "low") == "low"
        await asyncio.sleep(0)  # the read's done callback runs
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    await redis_client.delete(KEY)
    assert await router.lane("inventory", "low") == "low"  # cached
    await asyncio.sleep(0.4)
    assert await router.lane("inventory", "low") is None
    await redis_client.set(KEY, "high,normal,low")
    assert await router.lane("inventory", "low") is None  # the absence is cached too


@pytest.mark.standalone_only("counts one server's GET commands (INFO commandstats)")
async def test_concurrent_lookups_share_one_read(redis_client: Any) -> None:
    """Twenty sends to a target whose lanes are not known yet make one GET, not twenty."""
    await redis_client.set(KEY, "high,normal,low")
    router = LaneRouter(redis_client, QM, cache_s=5)

    async def gets() -> int:
        stats = await redis_client.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))

    before = await gets()
    found = await asyncio.gather(*(router.lanes_of("inventory") for _ in range(20)))
    assert set(found) == {frozenset({"high", "normal", "low"})}
    assert await gets() - before == 1


async def test_a_timed_out_call_is_forgotten(bus: Any) -> None:
    """A pseudo-sync call that timed out leaves nothing waiting in the reply listener."""
    client = bus.client("orders")
    assert await client.send_action_pseudo_sync(
        DomainAction(action_type="nobody.op.run"), timeout=0.1) is None
    assert client._replies.pending == 0


async def test_an_unknown_priority_is_refused_naming_the_lanes(bus: Any) -> None:
    """priority='urgent' is refused before anything is sent, and the error lists the lanes
    to choose from."""
    client = bus.client("orders")
    with pytest.raises(ValueError, match=r"priority 'urgent' is not a lane; nothing was sent: "
                                          r"use one of high, normal, low"):
        await client.send_action_async(DomainAction(action_type="quoting.price.get"),
                                       priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"priority 'urgent' is not a lane; nothing was sent"):
        await client.send_actions_async([DomainAction(action_type="quoting.price.get")],
                                        priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"priority 'urgent' is not a lane; nothing was sent"):
        await client.send_action_pseudo_sync(DomainAction(action_type="quoting.price.get"),
                                             priority="urgent")  # type: ignore[arg-type]
    assert await bus.redis.exists(QM.get_service_action_stream("quoting")) == 0
