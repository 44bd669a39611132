"""On a cluster, a send fails only for its own target's reason: a dead master fails only
the sends meant for it, even when they were coalesced with sends to healthy masters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import RedisClusterException

from actionbus import BaseRedisClient, CommonAppSettings, DomainAction, RedisManager, SendError
from actionbus.clients.sender import StreamWriter

ROUNDS = 3
PER_SERVICE = 10


def _settings(url: str) -> CommonAppSettings:
    return CommonAppSettings(
        _env_file=None, service_name="orders", redis_cluster=True, redis_url=url,
        redis_socket_connect_timeout=1, redis_socket_timeout=2, redis_retries=1,
    )


async def test_dead_master_fails_only_its_own_sends(redis_cluster: Any,
                                                    redis_cluster_url: str) -> None:
    """With one master killed, concurrent sends to services on the others all succeed."""
    manager = RedisManager(_settings(redis_cluster_url))
    redis = await manager.initialize()
    client = BaseRedisClient("orders", redis, _settings(redis_cluster_url))
    by_port: dict[int, str] = {}
    for i in range(200):  # one service per master
        node = redis.get_node_from_key(f"actionbus:dev:{{svc{i}}}:streams:main")
        by_port.setdefault(int(node.port), f"svc{i}")
    assert len(by_port) == 3
    dead_port = redis_cluster.nodes[0].port
    dead_service = by_port[dead_port]
    healthy = [s for p, s in by_port.items() if p != dead_port]
    await client.send_action_async(DomainAction(action_type=f"{dead_service}.item.warm"))
    redis_cluster.nodes[0].kill()
    try:
        outcomes: dict[str, list[Any]] = {s: [] for s in by_port.values()}
        for _ in range(ROUNDS):
            services = [s for s in by_port.values() for _ in range(PER_SERVICE)]
            results = await asyncio.gather(
                *(client.send_action_async(DomainAction(action_type=f"{s}.item.add"))
                  for s in services),
                return_exceptions=True,
            )
            for service, result in zip(services, results, strict=True):
                outcomes[service].append(result)
        failed_healthy = [r for s in healthy for r in outcomes[s] if isinstance(r, BaseException)]
        dead = outcomes[dead_service]
        print(f"healthy sends failed: {len(failed_healthy)} of {2 * ROUNDS * PER_SERVICE}; "
              f"dead-master sends failed: {sum(isinstance(r, SendError) for r in dead)} "
              f"of {len(dead)}")
        assert failed_healthy == [], [repr(r) for r in failed_healthy[:2]]
        assert all(isinstance(r, SendError) for r in dead)
        assert not any(r.outcome_unknown for r in dead)  # refused connections: not sent
    finally:
        await client.close()
        await manager.close()
        redis_cluster.start()


def _client_ids(node: Any) -> set[int]:
    """Ids of the clients connected to ``node``, without the connection that asks."""
    with node.client() as admin:
        me = admin.client_id()
        return {int(c["id"]) for c in admin.client_list()} - {me}


async def test_a_client_closed_after_a_failed_command_closes_its_connections(
    redis_cluster: Any, redis_cluster_url: str
) -> None:
    """Closed after a command failed on a dead master (redis-py's aclose() then closes
    nothing), the cluster client still closes its connections to the live masters."""
    live = redis_cluster.nodes[1:]
    before = {node.port: _client_ids(node) for node in live}
    manager = RedisManager(_settings(redis_cluster_url))
    redis = await manager.initialize()
    keys: dict[int, str] = {}
    for i in range(200):
        keys.setdefault(int(redis.get_node_from_key(f"k{i}").port), f"k{i}")
    for key in keys.values():
        await redis.set(key, "1")
    opened = {node.port: _client_ids(node) - before[node.port] for node in live}
    assert all(opened.values())  # the client holds a connection to every live master
    redis_cluster.nodes[0].kill()
    try:
        with pytest.raises((RedisConnError, RedisClusterException)):
            await redis.set(keys[redis_cluster.nodes[0].port], "2")
        await manager.close()
        for _ in range(100):  # bounded: the server drops a closed connection at once
            still = {p: opened[p] & _client_ids(n) for p, n in zip(before, live, strict=True)}
            if not any(still.values()):
                break
            await asyncio.sleep(0.05)
        assert not any(still.values()), f"connections left open: {still}"
    finally:
        await manager.close()
        redis_cluster.start()


async def test_a_stalled_master_fails_a_batchs_entries_of_one_stream_with_one_attempt(
    redis_cluster: Any, redis_cluster_url: str
) -> None:
    """Entries of one stream in a coalesced batch go one after another (to keep their order);
    when one fails (its master stalls past the socket timeout), the later ones fail with it
    without being tried, so a stalled master costs one timeout per stream, not per entry."""
    settings = _settings(redis_cluster_url).model_copy(
        update={"redis_socket_timeout": 0.25, "redis_retries": 0})
    manager = RedisManager(settings)
    redis = await manager.initialize()
    stream = "actionbus:dev:{stalled}:streams:main"
    port = int(redis.get_node_from_key(stream).port)
    node = next(n for n in redis_cluster.nodes if n.port == port)
    writer = StreamWriter(redis)
    await writer.xadd(stream, "warm")
    with node.client() as admin:
        before = int(admin.info("stats")["total_connections_received"])
        admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            results = await writer.xadd_many([(stream, str(i)) for i in range(5)])
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        attempts = int(admin.info("stats")["total_connections_received"]) - before
    try:
        print(f"5 entries to a stalled master: {attempts} new connections")
        assert all(isinstance(r, BaseException) for r in results), results
        assert attempts <= 1, "the later entries of the stream were tried too"
        assert await redis.xlen(stream) == 1
    finally:
        await manager.close()
