"""Periodic upkeep: safe stream trimming, removal of gone consumers, eviction warnings."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError, ResponseError

from actionbus.connection import AnyRedis
from actionbus.streams import text

__all__ = [
    "check_eviction_policy", "remove_gone_consumers", "safe_trim", "safe_trim_id",
    "trim_around_pending",
]

logger = logging.getLogger("actionbus.worker")

# Delete a consumer only if it has nothing pending, atomically (one key: cluster-safe).
_DELETE_IF_IDLE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) >= 0 and 1 or 0
"""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def safe_trim_id(redis: AnyRedis, stream: str) -> str | None:
    """The oldest id some group still needs: its oldest pending or first undelivered entry.

    Entries before it were delivered to every group and acknowledged by all.
    """
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return None
    needed: list[str] = []
    for info in groups:
        name = text(info["name"])
        last = text(info["last-delivered-id"])
        ms, seq = _id_key(last)
        needed.append(f"{ms}-{seq + 1}")  # first entry not yet delivered
        if int(info["pending"]):
            summary = await redis.xpending(stream, name)
            if summary.get("min"):
                needed.append(text(summary["min"]))
    return min(needed, key=_id_key)


async def safe_trim(redis: AnyRedis, stream: str, retention: int) -> int:
    """If ``stream`` holds more than ``retention`` entries, drop the fully processed ones.

    Never removes an entry that is pending or not yet delivered to every group.
    Returns how many entries were removed.
    """
    if await redis.xlen(stream) <= retention:
        return 0
    cut = await safe_trim_id(redis, stream)
    if cut is None:
        return 0
    return int(await redis.xtrim(stream, minid=cut, approximate=False))


async def trim_around_pending(
    redis: AnyRedis, stream: str, retention: int, *, stuck_after_ms: int, max_delete: int = 1000
) -> int:
    """When trimming is blocked by old pending entries, delete the processed ones after them.

    ``safe_trim`` stops at the oldest pending entry; one entry stuck there (a handler that
    keeps failing while Redis is at ``maxmemory``) would keep every later entry, so memory
    never frees. If the stream is over ``retention`` and its oldest pending entry is older
    than ``stuck_after_ms`` (by its id's time), this ``XDEL``-s up to ``max_delete`` of the
    oldest entries that every group received and acknowledged; pending entries are kept
    whole. ``XDEL`` and ``XTRIM`` are allowed at ``maxmemory``. Returns how many it deleted.
    """
    excess = int(await redis.xlen(stream)) - retention
    if excess <= 0:
        return 0
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return 0
    names = [text(g["name"]) for g in groups]
    delivered = min((text(g["last-delivered-id"]) for g in groups), key=_id_key)
    oldest: list[str] = []
    for name in names:
        summary = await redis.xpending(stream, name)
        if summary.get("min"):
            oldest.append(text(summary["min"]))
    if not oldest:
        return 0
    first = min(oldest, key=_id_key)
    now_ms = int(time.time() * 1000)  # TIME is not in the worker's ACL; the bound is long
    if now_ms - _id_key(first)[0] < stuck_after_ms:
        return 0
    want = min(excess, max_delete)
    entries: Any = await redis.xrange(stream, first, delivered, count=want + 1000)
    ids = [text(e[0]) for e in entries]
    if not ids:
        return 0
    pending: set[str] = set()
    for name in names:
        rows: Any = await redis.xpending_range(stream, name, min=ids[0], max=ids[-1],
                                               count=len(ids))
        pending.update(text(r["message_id"]) for r in rows)
    doomed = [i for i in ids if i not in pending][:want]
    if not doomed:
        return 0
    removed = int(await redis.xdel(stream, *doomed))
    logger.warning(
        "trimming %s was blocked by entries pending since %s: deleted %d processed entries "
        "after them (pending entries kept)", stream, first, removed,
    )
    return removed


async def remove_gone_consumers(
    redis: AnyRedis, stream: str, group: str, me: str, idle_ms: int
) -> list[str]:
    """Remove consumers idle for ``idle_ms`` that hold no pending entries; return their names."""
    removed = []
    script = redis.register_script(_DELETE_IF_IDLE)
    for info in await redis.xinfo_consumers(stream, group):
        name = text(info["name"])
        if name == me or int(info["idle"]) < idle_ms or int(info["pending"]):
            continue
        if await script(keys=[stream], args=[group, name]):
            removed.append(name)
    if removed:
        logger.info("removed %d gone consumer(s) from %s/%s: %s", len(removed), stream, group,
                    ", ".join(removed))
    return removed


async def check_eviction_policy(redis: AnyRedis) -> str | None:
    """Warn if the server may evict keys (an evicted stream loses its group and actions).

    Returns the policy, or ``None`` if the server does not allow CONFIG GET.
    """
    try:
        config: Any = await redis.config_get("maxmemory-policy")
    except (ResponseError, RedisError):
        return None
    values = {text(k): text(v) for k, v in config.items()}
    policy = values.get("maxmemory-policy")
    if policy and policy.startswith("allkeys-"):
        logger.warning(
            "Redis maxmemory-policy is %r: under memory pressure Redis may evict action "
            "streams, losing their consumer groups and undelivered actions. Use 'noeviction' "
            "(or a 'volatile-*' policy) for servers that hold actionbus streams.", policy,
        )
    return policy
