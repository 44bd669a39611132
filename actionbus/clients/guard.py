"""The one place where whatever redis-py raises becomes an actionbus error.

Send, state and dead-letter calls run their Redis commands inside ``translate_errors``:
``RedisError``, ``RedisClusterException`` (which is not a ``RedisError``), ``OSError``,
``EOFError`` and the ``AttributeError`` a half-closed redis-py connection can raise all
leave as the caller's library error, chained to the original. Also tracks clients
closed by ``RedisManager``/``RedisPool``, so a closed client refuses to send instead of
silently reconnecting.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from redis.exceptions import (
    ConnectionError as RedisConnError,
)
from redis.exceptions import (
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)

from actionbus.exceptions import ActionBusError, ClientNotInitializedError

__all__ = [
    "CLIENT_FAILURES",
    "check_open",
    "describe_failure",
    "mark_closed",
    "outcome_unknown",
    "translate_errors",
]

CLIENT_FAILURES: tuple[type[BaseException], ...] = (
    RedisError, RedisClusterException, OSError, EOFError, AttributeError,
)
"""What a Redis call may raise underneath (``TimeoutError`` is an ``OSError``)."""

_CLOSED: weakref.WeakSet[Any] = weakref.WeakSet()


def mark_closed(client: Any) -> None:
    """Remember that ``client`` was closed by its owner; sends on it are refused."""
    with contextlib.suppress(TypeError):
        _CLOSED.add(client)


def check_open(client: Any, who: str) -> None:
    """Raise ``ClientNotInitializedError`` if ``client`` was closed by its owner."""
    with contextlib.suppress(TypeError):
        if client in _CLOSED:
            raise ClientNotInitializedError(
                f"{who}: its Redis client was closed (RedisManager.close() or "
                "close_redis_pool()); nothing was sent. Create the client from a manager "
                "that is initialized."
            )


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed write may still have been applied by the server.

    Known not applied: the server answered with an error, no connection could be taken
    from the pool, the connection could not be opened, no node serves the slot.
    Otherwise (a timeout or a connection broken while waiting for the answer) the
    command may have run.
    """
    if isinstance(exc, ResponseError | MaxConnectionsError | SlotNotCoveredError):
        return False
    if isinstance(exc, RedisConnError):
        message = str(exc)
        # redis-py's connect failures read "Error <n> connecting to <host>:<port>"; a pool
        # wait that timed out reads "No connection available".
        return not ("connecting to" in message or "No connection available" in message)
    return not isinstance(exc, RedisClusterException | ConnectionRefusedError)


def describe_failure(exc: BaseException) -> str:
    """``Type: message`` of an underlying failure, for error messages."""
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def translate_errors(make: Callable[[str, BaseException], ActionBusError]) -> Iterator[None]:
    """Re-raise any client failure inside the block as ``make(description, exc)``."""
    try:
        yield
    except ActionBusError:
        raise
    except CLIENT_FAILURES as exc:
        raise make(describe_failure(exc), exc) from exc
