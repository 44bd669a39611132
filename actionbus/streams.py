"""Consumer-group helpers: the one place that interprets BUSYGROUP and NOGROUP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from actionbus.connection import AnyRedis
from actionbus.exceptions import ConsumerGroupError

__all__ = [
    "ensure_group", "entry_fields", "fast_stream_reads", "is_busygroup", "is_nogroup", "text",
]


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


def entry_fields(flat: Any) -> dict[Any, Any]:
    """An entry's flat ``[field, value, ...]`` as a dict, as redis-py gives it for XREADGROUP
    (``{}`` for an entry deleted while pending)."""
    return {} if flat is None else dict(zip(flat[::2], flat[1::2], strict=False))


def _fast_xread(original: Callable[..., Any]) -> Callable[..., Any]:
    """redis-py's legacy result shape (``legacy_responses=True``, the default, which
    actionbus's clients use and its reader expects) for a RESP2 list or a RESP3 map, built
    with a dict literal for the usual one-field entry; nil and options such as CLAIM go to
    ``original``."""

    def parse(response: Any, **options: Any) -> Any:
        if options or not isinstance(response, dict | list):
            return original(response, **options)
        return [
            [stream, [(entry[0], {entry[1][0]: entry[1][1]} if entry[1] is not None
                       and len(entry[1]) == 2 else entry_fields(entry[1]))
                      if entry is not None else (None, None) for entry in entries]
             if entries is not None else None]
            for stream, entries in (response.items() if isinstance(response, dict)
                                    else response)
        ]

    parse.fast_of = original  # type: ignore[attr-defined]
    return parse


def fast_stream_reads(redis: AnyRedis) -> None:
    """Parse ``redis``'s XREADGROUP replies into redis-py's legacy shape (``[[stream,
    [(id, fields), …]], …]``) with less Python per entry (about 0.3 µs of the worker's CPU
    per entry read), through redis-py's public ``set_response_callback``; once per client."""
    current: Any = redis.response_callbacks.get("XREADGROUP")
    if current is not None and not hasattr(current, "fast_of"):
        redis.set_response_callback("XREADGROUP", _fast_xread(current))
