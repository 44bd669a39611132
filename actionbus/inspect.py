"""Inspection: what a service's streams, consumer groups, consumers and dead letters look like.

``await inspect_service(redis, queues, "inventory")`` returns a ``ServiceInfo``; the CLI's
``info`` prints it, and status commands or dashboards can read the same typed models. A
service that uses priority lanes also gets one ``LaneInfo`` per lane. Ages are measured with
this machine's clock against the entry ids' timestamps.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from actionbus.clients.queue_manager import LANES, QueueManager
from actionbus.connection import AnyRedis
from actionbus.dead_letters import DeadLetterQueue
from actionbus.streams import text
from actionbus.workers.presence import read_presence

__all__ = [
    "ConsumerInfo", "GroupInfo", "LaneInfo", "ServiceInfo", "inspect_service", "uses_lanes",
]


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
    entries_read: int | None = None
    """Entries delivered to the group since it was created (``XINFO GROUPS`` entries-read,
    Redis 7.0+; ``None`` if unknown)."""
    oldest_pending_id: str | None = None
    oldest_pending_age_ms: int | None = None
    """How long ago the oldest pending entry was added to the stream."""
    consumers: list[ConsumerInfo] = []


class LaneInfo(BaseModel):
    """One priority lane (``high``, ``normal`` = the main stream, ``low``) of a service."""

    lane: str
    stream: str
    length: int
    waiting: int
    """Entries not yet delivered (the largest group lag; all entries if no group)."""
    pending: int
    """Entries delivered and not yet acknowledged, over all groups."""
    oldest_pending_age_ms: int | None = None
    """Age of the oldest pending entry of any group."""
    oldest_waiting_age_ms: int | None = None
    """How long the first entry not yet delivered has been in the lane (a starving lane
    shows here first)."""
    groups: list[GroupInfo] = []


class ServiceInfo(BaseModel):
    """A service's action stream, its groups and its dead letters (and its lanes)."""

    service: str
    stream: str
    length: int
    """Entries in the main stream, plus the other lanes' when the service uses lanes."""
    groups: list[GroupInfo] = []
    """The main stream's groups (each lane's are in ``lanes``)."""
    dead_letters: int = 0
    waiting: int = 0
    """Entries not yet delivered to any group (the largest group lag; all entries if no
    group), summed over the lanes."""
    pending: int = 0
    """Entries delivered and not yet acknowledged, over all groups (and lanes)."""
    exists: bool = True
    """``False`` when the service has no stream, no dead letters and no live worker."""
    lanes: list[LaneInfo] = []
    """Each lane, most urgent first, when the service uses lanes (a lane stream or the
    lanes descriptor exists); empty for a service with only its main stream."""

    def consumers(self) -> list[tuple[str, ConsumerInfo]]:
        """Each (group, consumer) once: with lanes, its pending summed over the lanes and
        its idle time the least of them."""
        merged: dict[tuple[str, str], ConsumerInfo] = {}
        for group in [g for lane in self.lanes for g in lane.groups] or self.groups:
            for consumer in group.consumers:
                seen = merged.get((group.name, consumer.name))
                if seen is None:
                    merged[(group.name, consumer.name)] = consumer.model_copy()
                else:
                    seen.pending += consumer.pending
                    seen.idle_ms = min(seen.idle_ms, consumer.idle_ms)
        return [(group, consumer) for (group, _), consumer in merged.items()]


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
        entries_read=_optional_int(raw.get("entries-read")),
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


async def uses_lanes(redis: AnyRedis, queues: QueueManager, service: str) -> bool:
    """Whether ``service`` has a lane stream (``high``/``low``) or a live lanes descriptor."""
    keys = [queues.get_lane_stream(service, lane) for lane in LANES if lane != "normal"]
    return bool(await redis.exists(*keys, queues.get_lanes_key(service)))


async def _lane(redis: AnyRedis, stream: str, lane: str, now_ms: int) -> LaneInfo:
    info = LaneInfo(lane=lane, stream=stream, length=int(await redis.xlen(stream)), waiting=0,
                    pending=0)
    if await redis.exists(stream):
        groups: Any = await redis.xinfo_groups(stream)
        info.groups = [await _group(redis, stream, raw, now_ms) for raw in groups]
    info.pending = sum(g.pending for g in info.groups)
    lags = [await _lag(redis, stream, g) for g in info.groups]
    info.waiting = max(lags) if lags else info.length
    ages = [g.oldest_pending_age_ms for g in info.groups if g.oldest_pending_age_ms is not None]
    info.oldest_pending_age_ms = max(ages) if ages else None
    return info


async def _oldest_waiting(redis: AnyRedis, lane: LaneInfo, now_ms: int) -> int | None:
    """The age of the first entry the most behind group has not been given yet."""
    if not lane.waiting:
        return None
    behind = min((g for g in lane.groups), default=None,
                 key=lambda g: tuple(int(p) for p in g.last_delivered_id.split("-")))
    start = "-" if behind is None else f"({behind.last_delivered_id}"
    first: Any = await redis.xrange(lane.stream, min=start, max="+", count=1)
    return _id_age_ms(text(first[0][0]), now_ms) if first else None


async def inspect_service(redis: AnyRedis, queues: QueueManager, service: str) -> ServiceInfo:
    """The state of ``service``'s streams (all zero/empty if it does not exist yet)."""
    now_ms = int(time.time() * 1000)
    stream = queues.get_service_action_stream(service)
    if await uses_lanes(redis, queues, service):
        lanes = [await _lane(redis, queues.get_lane_stream(service, lane), lane, now_ms)
                 for lane in LANES]
        for lane_info in lanes:
            lane_info.oldest_waiting_age_ms = await _oldest_waiting(redis, lane_info, now_ms)
    else:
        lanes = [await _lane(redis, stream, "normal", now_ms)]
    main = next(lane for lane in lanes if lane.stream == stream)
    info = ServiceInfo(service=service, stream=stream, groups=main.groups,
                       length=sum(lane.length for lane in lanes),
                       waiting=sum(lane.waiting for lane in lanes),
                       pending=sum(lane.pending for lane in lanes),
                       lanes=lanes if len(lanes) > 1 else [])
    info.dead_letters = await DeadLetterQueue(redis, queues, service).count()
    presence = await read_presence(redis, queues, service)
    for lane in lanes:
        for group in lane.groups:
            for consumer in group.consumers:
                consumer.alive = presence.get(consumer.name, False if presence else None)
    info.exists = bool(info.length or info.groups or info.dead_letters or presence)
    return info


async def _lag(redis: AnyRedis, stream: str, group: GroupInfo) -> int:
    if group.lag is not None:
        return group.lag
    # Redis cannot tell the lag after deletions in the middle of the stream: count them.
    after: Any = await redis.xrange(stream, min=f"({group.last_delivered_id}", max="+",
                                    count=100_000)
    return len(after)
