"""Durable sends: ``XADD`` then ``WAIT n timeout`` on the same connection of the same node.

``WAIT`` counts the replicas that acknowledged every write made *by the connection it is
sent on*, so the two commands must share one connection: a standalone (or Sentinel)
client sends them as one pipeline; on Redis Cluster they go as one pipeline to the node
that owns the stream's slot (``get_node_from_key``), following ``MOVED``/``ASK``
redirects during a resharding. The entry id and the number of replicas that acknowledged
it are returned; deciding what too few means is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError

from actionbus.clients.queue_manager import ORDERED_SUFFIX
from actionbus.connection import AnyRedis
from actionbus.exceptions import ConfigurationError, NotReplicatedError
from actionbus.streams import text

__all__ = ["DurableWriter", "check_durability", "xadd_and_wait"]

DATA_FIELD = "data"
_MAX_REDIRECTS = 5
_REFRESH_TIMEOUT_S = 2.0


Acked = int | BaseException
"""Replicas that acknowledged, or why ``WAIT`` failed (e.g. ``NOPERM``: no ``+wait``)."""


async def xadd_and_wait(
    redis: AnyRedis, stream: str, payload: str | bytes, replicas: int, timeout_ms: int
) -> tuple[str, Acked]:
    """Append ``{"data": payload}`` to ``stream`` and wait for ``replicas`` replicas (at
    most ``timeout_ms``); return (entry id, replicas that acknowledged or the WAIT's
    error). Raises what redis-py raises when the entry could not be written."""
    if not isinstance(redis, RedisCluster):
        pipe = redis.pipeline(transaction=False)
        pipe.xadd(stream, {DATA_FIELD: payload})
        pipe.execute_command("WAIT", replicas, timeout_ms)
        added, waited = await pipe.execute(raise_on_error=False)
        if isinstance(added, BaseException):
            raise added
        return text(added), waited if isinstance(waited, BaseException) else int(waited)
    try:
        return await _on_cluster(redis, stream, payload, replicas, timeout_ms)
    except (ConnectionError, TimeoutError, RedisError, OSError):
        await _refresh(redis, stream)
        raise


async def _on_cluster(
    redis: RedisCluster, stream: str, payload: str | bytes, replicas: int, timeout_ms: int
) -> tuple[str, Acked]:
    await redis.initialize()  # no-op unless a failure asked for a topology refresh
    node: ClusterNode | None = redis.get_node_from_key(stream)
    asking = False
    for _ in range(_MAX_REDIRECTS):
        if node is None:
            raise RedisClusterException(f"no node serves the slot of {stream}")
        commands = [PipelineCommand(0, "ASKING")] if asking else []
        commands += [
            PipelineCommand(len(commands), "XADD", stream, "*", DATA_FIELD, payload),
            PipelineCommand(len(commands) + 1, "WAIT", replicas, timeout_ms),
        ]
        await node.execute_pipeline(commands)
        added, waited = commands[-2].result, commands[-1].result
        if isinstance(added, AskError):  # MovedError is a subclass: both redirect
            asking = not isinstance(added, MovedError)
            if not asking:
                await _refresh(redis, stream)  # the client learns the new owner too
            node = redis.get_node(host=added.host, port=added.port)
            continue
        if isinstance(added, BaseException):
            raise added
        if isinstance(waited, BaseException):
            return text(added), waited  # written, but the node could not say
        return text(added), int(waited)
    raise RedisClusterException(f"too many redirects sending to {stream}")


async def _refresh(redis: RedisCluster, stream: str) -> None:
    """Let the cluster client find the stream's current owner (after a failover or a
    MOVED): a keyed read through it refreshes its slot table on error or redirect."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_REFRESH_TIMEOUT_S):
            await redis.xlen(stream)



def check_durability(replicas: object, timeout_ms: object) -> tuple[int, int]:
    """Validate ``wait_replicas``/``wait_timeout_ms`` given to a send method."""
    for name, value, least in (("wait_replicas", replicas, 0), ("wait_timeout_ms", timeout_ms, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigurationError(f"{name} must be an integer >= {least}, got {value!r}; "
                             "nothing was sent")
    assert isinstance(replicas, int)
    assert isinstance(timeout_ms, int)
    return replicas, timeout_ms


class DurableWriter:
    """Writes entries with ``xadd_and_wait``; too few replicas raise ``NotReplicatedError``.

    ``xadd_many`` has ``StreamWriter.xadd_many``'s shape, for ``send_actions_async``:
    each entry is written and waited for on its own, all in parallel.
    """

    def __init__(self, redis: AnyRedis, replicas: int, timeout_ms: int) -> None:
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    async def xadd(self, stream: str, payload: str | bytes) -> str:
        """Append one entry and wait for the replicas; return its id."""
        entry_id, acked = await xadd_and_wait(
            self.redis, stream, payload, self.replicas, self.timeout_ms
        )
        if isinstance(acked, BaseException):
            why, acked = f"WAIT failed ({type(acked).__name__}: {acked}), so none of", 0
        else:
            why = f"only {acked} of"
        if acked < self.replicas:
            raise NotReplicatedError(
                f"entry {entry_id} was written to {stream} but {why} {self.replicas} "
                f"replica(s) confirmed it within {self.timeout_ms} ms: a failover of that "
                "master now could lose it. It is in the stream; resend (same action_id) "
                "only if its handler is idempotent, or check replication (and that the "
                "Redis user may run WAIT).",
                entry_id=entry_id, replicas=acked, wanted=self.replicas,
            )
        return entry_id

    async def xadd_many(
        self, items: Sequence[tuple[str, str | bytes]]
    ) -> list[str | BaseException]:
        """Append many entries; return each one's id or the exception that failed it."""
        results: list[str | BaseException] = [""] * len(items)

        async def one(i: int) -> None:
            try:
                results[i] = await self.xadd(*items[i])
            except Exception as exc:
                results[i] = exc

        async def in_order(indexes: list[int]) -> None:
            for i in indexes:
                await one(i)

        ordered: dict[str, list[int]] = {}  # one ordered stream's entries keep their order
        for i, (stream, _) in enumerate(items):
            if stream.endswith(ORDERED_SUFFIX):
                ordered.setdefault(stream, []).append(i)
        await asyncio.gather(*(one(i) for i, (stream, _) in enumerate(items)
                               if not stream.endswith(ORDERED_SUFFIX)),
                             *(in_order(indexes) for indexes in ordered.values()))
        return results
