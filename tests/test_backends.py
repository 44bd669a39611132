"""The suite's `backends` marker: marked tests run on the standalone server and the cluster."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import RedisCluster

from actionbus import DomainAction

pytestmark = pytest.mark.backends


async def test_fixtures_follow_the_backend(
    backend: str, make_settings: Any, conn: Any, redis_client: Any, bus: Any
) -> None:
    """Settings, the manager's client, `redis_client` and `bus` all point at the backend,
    and what one of them writes the others read."""
    cluster = backend == "cluster"
    assert make_settings().redis_cluster is cluster
    for client in (conn, redis_client, bus.redis):
        assert isinstance(client, RedisCluster) is cluster
    await bus.client("orders").send_action_async(DomainAction(action_type="inv.item.add"))
    assert await redis_client.xlen("actionbus:dev:{inv}:streams:main") == 1


def test_every_marked_test_of_the_session_is_parametrised(request: pytest.FixtureRequest) -> None:
    """Each collected test under `backends` that uses the backend (and is not
    `standalone_only`) carries a `backend` parameter, so it runs once per backend."""
    marked = [
        item for item in request.session.items
        if isinstance(item, pytest.Function) and item.get_closest_marker("backends")
        and "backend" in item.fixturenames and not item.get_closest_marker("standalone_only")
    ]
    assert marked
    missing = [item.nodeid for item in marked
               if not hasattr(item, "callspec") or "backend" not in item.callspec.params]
    assert missing == []
