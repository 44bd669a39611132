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
import functools
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import (
    AuthenticationError,
    MaxConnectionsError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import (
    ConnectionError as RedisConnError,
)

from actionbus.config import mask_url
from actionbus.connection import describe
from actionbus.exceptions import ActionBusError, ClientNotInitializedError, RedisConnectionError

__all__ = [
    "CLIENT_FAILURES",
    "check_open",
    "describe_failure",
    "mark_closed",
    "outcome_unknown",
    "redis_call",
    "translate_errors",
    "unreachable",
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
    try:
        closed = client in _CLOSED
    except TypeError:  # cannot be weakly referenced: never marked closed
        return
    if closed:
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


def advice(exc: BaseException) -> str:
    """What to do about a failure: fix a permission or the data, or retry once Redis is back."""
    if isinstance(exc, NoPermissionError):
        return ("The Redis user lacks a command or key permission: grant it (README, "
                "'Security', has the ACL of each role).")
    if isinstance(exc, AuthenticationError):
        return "Redis refused the credentials: check the user name and password."
    if isinstance(exc, ResponseError):
        return "Redis refused the command; retrying will not help until the cause is fixed."
    return "Check that Redis is reachable; the call can be retried."


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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def redis_call(
    error: type[ActionBusError], what: str
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R]]]:
    """Decorate an async method so client failures leave as ``error``.

    ``what`` names the object, formatted with the method's ``self`` (e.g.
    ``"dead letters of {self.service!r}"``).
    """

    def wrap(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
        @functools.wraps(method)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            def make(description: str, exc: BaseException) -> ActionBusError:
                subject = what.format(self=args[0]) if args else what
                return error(f"{subject}: {method.__name__}() failed: {description}. "
                             f"{advice(exc)}")

            with translate_errors(make):
                return await method(*args, **kwargs)

        return run

    return wrap


def unreachable(settings: Any) -> Callable[[str, BaseException], ActionBusError]:
    """Error factory for a failed first contact: ``RedisConnectionError`` naming the server."""
    def make(description: str, exc: BaseException) -> ActionBusError:
        return RedisConnectionError(
            f"cannot reach Redis at {describe(settings)}: {mask_url(description)}. Check that "
            "the server (every cluster node) runs and REDIS_URL/redis_host/redis_port point at it."
        )

    return make
