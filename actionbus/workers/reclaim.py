"""Claiming: take over abandoned entries, keep our own alive, and re-take our retries.

An entry is abandoned when it stayed pending longer than ``claim_idle_ms`` without a
heartbeat. ``XCLAIM`` with that minimum idle time is atomic, so when two workers race for
the same entry only the first gets it; the second sees it as freshly claimed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from actionbus.connection import AnyRedis
from actionbus.streams import text

__all__ = ["Claimed", "claim_abandoned", "claim_own_pending", "heartbeat", "reclaim_for_retry"]


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry this worker now owns, with how many times it has been delivered."""

    entry_id: str
    fields: dict[Any, Any]
    deliveries: int
    previous_consumer: str


async def claim_abandoned(
    redis: AnyRedis,
    stream: str,
    group: str,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    skip: Collection[str],
) -> list[Claimed]:
    """Claim up to ``count`` entries idle for ``min_idle_ms``, except those in ``skip``."""
    pending: Any = await redis.xpending_range(
        stream, group, min="-", max="+", count=count, idle=min_idle_ms
    )
    candidates = {
        text(p["message_id"]): (int(p["times_delivered"]), text(p["consumer"]))
        for p in pending
        if text(p["message_id"]) not in skip
    }
    if not candidates:
        return []
    entries: Any = await redis.xclaim(stream, group, consumer, min_idle_ms, list(candidates))
    claimed = []
    for entry_id, fields in entries:
        if fields is None:  # deleted from the stream meanwhile
            continue
        key = text(entry_id)
        delivered, previous = candidates.get(key, (0, ""))
        claimed.append(Claimed(key, fields, delivered + 1, previous))
    return claimed


async def claim_own_pending(
    redis: AnyRedis,
    stream: str,
    group: str,
    consumer: str,
    *,
    count: int,
    skip: Collection[str],
) -> list[Claimed]:
    """Re-take entries delivered to this consumer whose reads never reached us.

    A read whose reply is lost (a connection dropped or hung mid-command) still delivered
    its entries on the server: they are pending on this consumer, and ``>`` reads will
    never return them again. Entries in ``skip`` (in progress, or done and awaiting their
    acknowledgement) are left alone.
    """
    pending: Any = await redis.xpending_range(
        stream, group, min="-", max="+", count=count + len(skip), consumername=consumer
    )
    candidates = {
        text(p["message_id"]): int(p["times_delivered"])
        for p in pending
        if text(p["message_id"]) not in skip
    }
    if not candidates:
        return []
    ids = list(candidates)[:count]
    entries: Any = await redis.xclaim(stream, group, consumer, 0, list[Any](ids))
    return [
        Claimed(text(entry_id), fields, candidates[text(entry_id)] + 1, consumer)
        for entry_id, fields in entries
        if fields is not None
    ]


async def heartbeat(
    redis: AnyRedis, stream: str, group: str, consumer: str, entry_ids: list[str]
) -> None:
    """Reset the idle time of entries we are still working on (delivery count unchanged)."""
    if entry_ids:
        await redis.xclaim(stream, group, consumer, 0, list[Any](entry_ids), justid=True)


async def reclaim_for_retry(
    redis: AnyRedis, stream: str, group: str, consumer: str, entry_id: str
) -> bool:
    """Count a new delivery of our own entry before retrying it; ``False`` if it is gone."""
    entries: Any = await redis.xclaim(stream, group, consumer, 0, [entry_id])
    return any(fields is not None for _, fields in entries)
