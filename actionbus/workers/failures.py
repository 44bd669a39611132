"""Which Redis errors are outages (retry with backoff) and which are refusals (fail alone).

``is_transient(exc)`` is the one classifier every worker loop and the output batcher use.
A transient error (connection lost, timeout, ``LOADING``, ``BUSY``, ``TRYAGAIN``,
``CLUSTERDOWN``, ``OOM`` …) means "try again later". Anything else Redis refuses
(``WRONGTYPE``, ``NOPERM``, ``WRONGPASS``/``NOAUTH``, unknown command, a bad argument)
will be refused again: the one operation fails, the rest keeps flowing.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

__all__ = ["TRANSIENT_PREFIXES", "describe", "is_transient"]

TRANSIENT_PREFIXES = (
    "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "MOVED", "ASK", "OOM",
    "READONLY", "NOREPLICAS", "UNBLOCKED",
)
"""Error codes of a ``ResponseError`` that a later attempt can outlive."""


def is_transient(exc: BaseException) -> bool:
    """True if retrying ``exc``'s operation later can succeed (an outage), else False."""
    if isinstance(exc, (AuthenticationError, NoPermissionError)):
        return False  # wrong credentials / missing ACL permission: not an outage
    if isinstance(exc, (ConnectionError, TimeoutError, BusyLoadingError, ClusterDownError,
                        TryAgainError, MasterDownError, AskError, OutOfMemoryError,
                        ReadOnlyError, OSError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, ResponseError):
        code = str(exc).split(" ", 1)[0].upper()
        return code in TRANSIENT_PREFIXES
    if isinstance(exc, RedisClusterException):
        return True  # topology could not be resolved (nodes down): an outage
    if isinstance(exc, RedisError):
        return True  # other client-side errors (pool exhausted, lost connection state)
    return isinstance(exc, AttributeError)  # redis-py on a half-closed connection



def describe(exc: BaseException) -> str:
    """What Redis refused, in one line (for ``NOPERM``: the command or key not permitted)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, NoPermissionError) or text.upper().startswith("NOPERM"):
        return f"missing ACL permission: {text}"
    return f"{type(exc).__name__}: {text}"

