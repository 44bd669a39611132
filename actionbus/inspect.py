"""Inspection: what a service's stream, consumer groups, consumers and dead letters look like.

``await inspect_service(redis, queues, "inventory")`` returns a ``ServiceInfo``; the CLI's
``info`` prints it, and status commands or dashboards can read the same typed models.
Ages are measured with this machine's clock against the entry ids' timestamps.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from actionbus.clients.queue_manager import QueueManager
from actionbus.connection import AnyRedis
from actionbus.dead_letters import DeadLetterQueue
from actionbus.streams import text
from actionbus.workers.presence import read_presence

__all__ = ["ConsumerInfo", "GroupInfo", "ServiceInfo", "inspect_service"]


class ConsumerInfo(BaseModel):
    """One consumer of a group."""

    name: str
    pending: int
    """Entries delivered to it and not yet acknowledged."""
    idle_ms: int
    """Since its last attempted interaction (read, claim, heartbeat)."""
    inactive_ms: int | None = None
    """Since its last successful interaction (Redis 7.2+; ``None`` before or if never)."""
    alive: bool | None = None
    """From the workers' presence heartbeat: ``True`` alive, ``False`` gone (stopped or
    killed), ``None`` for a consumer that never wrote one."""


class GroupInfo(BaseModel):
    """One consumer group on the service's stream."""

    name: str
    pending: int
    """Entries delivered and not yet acknowledged, over all consumers."""
    last_delivered_id: str
    lag: int | None = None
    """Entries not yet delivered to the group (``XINFO GROUPS`` lag; ``None`` if unknown)."""
    oldest_pending_id: str | None = None
    oldest_pending_age_ms: int | None = None
    """How long ago the oldest pending entry was added to the stream."""
    consumers: list[ConsumerInfo] = []


class ServiceInfo(BaseModel):
    """A service's action stream, its groups and its dead letters."""

    service: str
    stream: str
    length: int
    groups: list[GroupInfo] = []
    dead_letters: int = 0
    waiting: int = 0
    """Entries not yet delivered to any group (the largest group lag; all entries if no group)."""
    pending: int = 0
    """Entries delivered and not yet acknowledged, over all groups."""
    exists: bool = True
    """``False`` when the service has no stream, no dead letters and no live worker."""


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _id_age_ms(entry_id: str, now_ms: int) -> int:
    return max(0, now_ms - int(entry_id.partition("-")[0]))


async def _group(redis: AnyRedis, stream: str, raw: dict[str, Any], now_ms: int) -> GroupInfo:
    name = text(raw["name"])
    consumers: Any = await redis.xinfo_consumers(stream, name)
    group = GroupInfo(
        name=name,
        pending=int(raw["pending"]),
        last_delivered_id=text(raw["last-delivered-id"]),
        lag=_optional_int(raw.get("lag")),
        consumers=[
            ConsumerInfo(name=text(c["name"]), pending=int(c["pending"]), idle_ms=int(c["idle"]),
                         inactive_ms=_optional_int(c.get("inactive")))
            for c in consumers
        ],
    )
    if group.pending:
        summary: Any = await redis.xpending(stream, name)
        oldest = summary.get("min")
        if oldest is not None:
            group.oldest_pending_id = text(oldest)
            group.oldest_pending_age_ms = _id_age_ms(group.oldest_pending_id, now_ms)
    return group


async def inspect_service(redis: AnyRedis, queues: QueueManager, service: str) -> ServiceInfo:
    """The state of ``service``'s stream (all zero/empty if it does not exist yet)."""
    stream = queues.get_service_action_stream(service)
    info = ServiceInfo(service=service, stream=stream, length=int(await redis.xlen(stream)))
    if await redis.exists(stream):
        now_ms = int(time.time() * 1000)
        groups: Any = await redis.xinfo_groups(stream)
        info.groups = [await _group(redis, stream, raw, now_ms) for raw in groups]
    info.dead_letters = await DeadLetterQueue(redis, queues, service).count()
    presence = await read_presence(redis, queues, service)
    for group in info.groups:
        for consumer in group.consumers:
            consumer.alive = presence.get(consumer.name, False if presence else None)
    info.pending = sum(g.pending for g in info.groups)
    lags = [await _lag(redis, stream, g) for g in info.groups]
    info.waiting = max(lags) if lags else info.length
    info.exists = bool(info.length or info.groups or info.dead_letters or presence)
    return info


async def _lag(redis: AnyRedis, stream: str, group: GroupInfo) -> int:
    if group.lag is not None:
        return group.lag
    # Redis cannot tell the lag after deletions in the middle of the stream: count them.
    after: Any = await redis.xrange(stream, min=f"({group.last_delivered_id}", max="+",
                                    count=100_000)
    return len(after)
