"""Consumer-group helpers: the one place that interprets BUSYGROUP and NOGROUP."""

from __future__ import annotations

from redis.exceptions import ResponseError

from actionbus.connection import AnyRedis
from actionbus.exceptions import ConsumerGroupError

__all__ = ["ensure_group", "is_busygroup", "is_nogroup", "text"]


def text(value: bytes | str) -> str:
    """Decode a Redis reply whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def is_busygroup(exc: BaseException) -> bool:
    """True for ``BUSYGROUP``: XGROUP CREATE on a group that already exists (harmless)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSYGROUP")


def is_nogroup(exc: BaseException) -> bool:
    """True for ``NOGROUP``: the stream or group is gone, e.g. Redis restarted empty."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def ensure_group(redis: AnyRedis, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` (and the stream) if missing; ``True`` if created.

    The group starts at id ``0`` so actions sent before any worker existed, or after a
    restart emptied Redis, are all delivered.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if is_busygroup(exc):
            return False
        raise ConsumerGroupError(
            f"cannot create consumer group {group!r} on {stream}: {exc}"
        ) from exc
    return True
