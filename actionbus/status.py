"""What every service of a namespace is doing: discovery, status rows and stuck entries.

``discover_services`` finds the services of a prefix and environment with ``SCAN`` (never
``KEYS``); ``service_status`` summarises one service in a ``ServiceStatus`` row (the
``actionbus status`` table and the dashboard's overview), with a ``LaneStatus`` per lane
for a service that uses priority lanes; ``pending_entries`` lists the entries delivered and
not yet acknowledged, oldest first, with their action type (and lane).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from actionbus.clients.queue_manager import LANES, QueueManager
from actionbus.connection import AnyRedis
from actionbus.dead_letters import dead_letter_fields
from actionbus.delayed import DelayedQueue
from actionbus.exceptions import ActionBusError
from actionbus.inspect import ServiceInfo, inspect_service, uses_lanes
from actionbus.streams import text
from actionbus.workers.presence import handled_per_second, presence_key

__all__ = [
    "LaneStatus", "NotPendingError", "PendingEntry", "ScheduleState", "ServiceStatus",
    "dead_letter_pending",
    "discover_services", "format_age", "format_tick", "pending_entries", "retry_pending",
    "schedule_states", "service_status",
]


def format_age(ms: int | None) -> str:
    """A short age for people: ``4.2s``, ``3m05s``, ``1h02m`` or ``-``."""
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_tick(ms: int | None) -> str:
    """An epoch-millisecond time as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


class PendingEntry(BaseModel):
    """An entry delivered to a consumer and not yet acknowledged."""

    entry_id: str
    action_type: str
    action_id: str
    consumer: str
    deliveries: int
    idle_ms: int
    group: str
    lane: str = "normal"
    """The priority lane it is in (``normal``: the main stream)."""


class ScheduleState(BaseModel):
    """A periodic action of a service (``worker.schedule``) and the last tick it fired."""

    name: str
    last_tick_ms: int | None


async def schedule_states(
    redis: AnyRedis, queues: QueueManager, service: str
) -> list[ScheduleState]:
    """The service's schedules as its workers recorded them, by name."""
    recorded: Any = await redis.hgetall(queues.get_schedules_key(service))
    states = []
    for name, tick in recorded.items():
        value = text(tick)
        states.append(ScheduleState(name=text(name),
                                    last_tick_ms=int(value) if value.isdigit() else None))
    return sorted(states, key=lambda state: state.name)


class LaneStatus(BaseModel):
    """One priority lane of a ``ServiceStatus`` (``high``, ``normal``, ``low``)."""

    lane: str
    stream: str
    length: int
    waiting: int
    pending: int
    oldest_pending_age_ms: int | None
    oldest_waiting_age_ms: int | None
    """How long the first entry not yet delivered has waited (a starving lane shows here)."""
    delayed: int
    """Actions (and retries) waiting in the lane's delayed set."""
    entries_read: int | None = None
    """Entries the service's consumer group has read from the lane since it was created
    (``None``: no such group, or Redis cannot tell)."""


class ServiceStatus(BaseModel):
    """One row of ``actionbus status`` (figures summed over the lanes, if any)."""

    service: str
    waiting: int
    pending: int
    oldest_pending_age_ms: int | None
    dead_letters: int
    delayed: int
    consumers_alive: int
    consumers_gone: int
    handled_per_s: float
    last_error: str | None
    groups: list[str]
    lanes: list[LaneStatus] = []
    """Each lane, most urgent first, when the service uses lanes; else empty."""


async def discover_services(redis: AnyRedis, queues: QueueManager) -> list[str]:
    """Every service with a stream, dead letters, delayed actions or live workers, sorted."""
    base = f"{queues.prefix}:{queues.environment}:"
    found: set[str] = set()
    for kind in ("streams:*", "delayed:main", "consumers:main"):
        async for key in redis.scan_iter(match=f"{base}{{*}}:{kind}", count=1000):
            tagged = text(key)[len(base):].split(":", 1)[0]
            if len(tagged) > 2 and tagged[0] == "{" and tagged[-1] == "}":
                found.add(tagged[1:-1])
    return sorted(found)


def _describe(data: str) -> tuple[str, str]:
    try:
        action = json.loads(data)
        return str(action.get("action_type", "?")), str(action.get("action_id", "?"))
    except (ValueError, AttributeError):
        return "(malformed)", "?"


async def pending_entries(
    redis: AnyRedis, queues: QueueManager, service: str, count: int = 50
) -> list[PendingEntry]:
    """Up to ``count`` pending entries of ``service`` per group (and lane, most urgent
    first), oldest first."""
    lanes = LANES if await uses_lanes(redis, queues, service) else ("normal",)
    result: list[PendingEntry] = []
    for lane in lanes:
        result += await _pending_of(redis, queues.get_lane_stream(service, lane), lane, count)
    return result


async def _pending_of(redis: AnyRedis, stream: str, lane: str, count: int) -> list[PendingEntry]:
    if not await redis.exists(stream):
        return []
    groups: Any = await redis.xinfo_groups(stream)
    result: list[PendingEntry] = []
    for raw in groups:
        group = text(raw["name"])
        rows: Any = await redis.xpending_range(stream, group, min="-", max="+", count=count)
        for row in rows:
            entry_id = text(row["message_id"])
            entries: Any = await redis.xrange(stream, min=entry_id, max=entry_id, count=1)
            fields = {text(k): text(v) for k, v in entries[0][1].items()} if entries else {}
            action_type, action_id = _describe(fields.get("data", ""))
            result.append(PendingEntry(
                entry_id=entry_id, action_type=action_type, action_id=action_id,
                consumer=text(row["consumer"]), deliveries=int(row["times_delivered"]),
                idle_ms=int(row["time_since_delivered"]), group=group, lane=lane,
            ))
    return result


async def _last_error(redis: AnyRedis, queues: QueueManager, service: str) -> str | None:
    entries: Any = await redis.xrevrange(queues.get_dead_letter_stream(service), count=1)
    if not entries:
        return None
    fields = {text(k): text(v) for k, v in entries[0][1].items()}
    age_s = max(0, int(time.time()) - int(text(entries[0][0]).partition("-")[0]) // 1000)
    what = fields.get("error_type") or fields.get("reason", "unknown")
    message = " ".join(fields.get("error_message", "").split())[:80]
    return f"{what}: {message} ({age_s}s ago)" if message else f"{what} ({age_s}s ago)"


async def service_status(
    redis: AnyRedis, queues: QueueManager, service: str, info: ServiceInfo | None = None
) -> ServiceStatus:
    """The status row of ``service`` (``info`` if already read)."""
    info = info or await inspect_service(redis, queues, service)
    groups = [g for lane in info.lanes for g in lane.groups] or info.groups
    consumers = {c.name: c.alive for g in groups for c in g.consumers}
    presence: Any = await redis.hgetall(presence_key(queues, service))
    now_ms = int(time.time() * 1000)
    for name, until in presence.items():
        consumers.setdefault(text(name), int(text(until)) >= now_ms)
    ages = [g.oldest_pending_age_ms for g in groups if g.oldest_pending_age_ms is not None]
    lanes = [LaneStatus(
        lane=lane.lane, stream=lane.stream, length=lane.length, waiting=lane.waiting,
        pending=lane.pending, oldest_pending_age_ms=lane.oldest_pending_age_ms,
        oldest_waiting_age_ms=lane.oldest_waiting_age_ms,
        delayed=await DelayedQueue(redis, queues, service, lane.lane).count(),
        entries_read=next((g.entries_read for g in lane.groups if g.name == service), None),
    ) for lane in info.lanes]
    delayed = sum(lane.delayed for lane in lanes) if lanes else await DelayedQueue(
        redis, queues, service).count()
    return ServiceStatus(
        service=service, waiting=info.waiting, pending=info.pending,
        oldest_pending_age_ms=max(ages) if ages else None, dead_letters=info.dead_letters,
        delayed=delayed,
        consumers_alive=sum(1 for alive in consumers.values() if alive),
        consumers_gone=sum(1 for alive in consumers.values() if not alive),
        handled_per_s=round(await handled_per_second(redis, queues, service), 2),
        last_error=await _last_error(redis, queues, service),
        groups=[g.name for g in info.groups], lanes=lanes,
    )


class NotPendingError(ActionBusError):
    """The entry is not pending in the group (acknowledged, moved, or never there)."""


async def _take(redis: AnyRedis, queues: QueueManager, service: str, group: str | None,
                entry_id: str, lane: str | None) -> tuple[str, str, dict[str, str], int, str]:
    stream = queues.get_lane_stream(service, lane)
    group = group or service
    rows: Any = await redis.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    entries: Any = await redis.xrange(stream, min=entry_id, max=entry_id, count=1)
    if not rows or not entries:
        where = "" if lane in (None, "normal") else f" (lane {lane})"
        raise NotPendingError(
            f"{entry_id} is not pending in {service}'s group {group!r}{where} (acknowledged, "
            f"already moved, or never there); see `actionbus pending list {service}`"
        )
    fields = {text(k): text(v) for k, v in entries[0][1].items()}
    return stream, group, fields, int(rows[0]["times_delivered"]), text(rows[0]["consumer"])


async def retry_pending(redis: AnyRedis, queues: QueueManager, service: str, entry_id: str,
                        group: str | None = None, lane: str | None = None) -> str:
    """Re-queue a stuck entry at the end of its stream (its ``lane``'s; the stuck copy
    acknowledged and deleted, atomically); return the new entry id."""
    stream, grp, fields, _, _ = await _take(redis, queues, service, group, entry_id, lane)
    pipe: Any = redis.pipeline(transaction=True)
    pipe.xadd(stream, {"data": fields.get("data", "")})
    pipe.xack(stream, grp, entry_id)
    pipe.xdel(stream, entry_id)
    new_id, _, _ = await pipe.execute()
    return text(new_id)


async def dead_letter_pending(redis: AnyRedis, queues: QueueManager, service: str,
                              entry_id: str, reason: str = "operator",
                              group: str | None = None, lane: str | None = None) -> None:
    """Move a stuck entry (of ``lane``), whole, to the dead-letter stream with ``reason``
    (atomically)."""
    stream, grp, fields, deliveries, consumer = await _take(
        redis, queues, service, group, entry_id, lane)
    pipe: Any = redis.pipeline(transaction=True)
    pipe.xadd(queues.get_dead_letter_stream(service), dead_letter_fields(
        data=fields.get("data", ""), reason=reason, error_type="OperatorAction",
        error_message="dead-lettered by an operator", deliveries=deliveries,
        original_id=entry_id, stream=stream, consumer=consumer,
    ))
    pipe.xack(stream, grp, entry_id)
    pipe.xdel(stream, entry_id)
    await pipe.execute()
