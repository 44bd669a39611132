"""Connection pooling tuned for request/reply latency, with the same guarantees.

- ``WaitingConnectionPool``: like redis-py's ``BlockingConnectionPool`` (when all
  ``max_connections`` are busy a command waits up to ``timeout`` for one), but a free
  connection is taken directly, without entering a ``Condition`` and arming a timer.
- Its connections write with a cheap deadline: with ``socket_timeout`` set, redis-py
  wraps every write in ``asyncio.wait_for``, which creates a task per command. Here the
  write runs under ``asyncio.timeout`` instead; an expired write still disconnects and
  raises redis-py's ``TimeoutError``. Reads keep redis-py's own socket timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["WaitingConnectionPool"]


class _DeadlineWrites:
    """Mixin for redis-py connection classes: writes bounded without a task per command."""

    socket_timeout: float | None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if not timeout:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        writer = getattr(self, "_writer", None)
        self.socket_timeout = None  # redis-py's untimed path: no wait_for, no task
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except TimeoutError:
            # A plain close would wait to flush the unsent buffer to a peer that does not
            # read; drop the connection at once instead.
            if writer is not None:
                writer.transport.abort()
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


_DEADLINE_CLASSES: dict[type[Any], type[Any]] = {}


def _with_deadline_writes(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    if cls not in _DEADLINE_CLASSES:
        _DEADLINE_CLASSES[cls] = type(f"Deadline{cls.__name__}", (_DeadlineWrites, cls), {})
    return _DEADLINE_CLASSES[cls]


class WaitingConnectionPool(BlockingConnectionPool):
    """``BlockingConnectionPool`` with a fast path when a connection is available."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _with_deadline_writes(self.connection_class)
        self._waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A free connection at once; otherwise wait for one to be released.

        Arguments are passed on as received (redis-py 5 passes a command name, later
        versions none and warn if one is given).
        """
        if not self._waiting and self.can_get_connection():
            try:
                return await ConnectionPool.get_connection(self, *args, **kwargs)  # type: ignore[no-untyped-call]
            except RedisConnError as exc:
                # Another task took the last slot between the check and the take (redis-py 5
                # awaits inside its pool lock): wait for a connection like everyone else.
                if "Too many connections" not in str(exc):
                    raise
        self._waiting += 1
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            self._waiting -= 1

    async def release(self, connection: Any) -> None:
        """Return a connection; wake a waiter only if someone waits."""
        if self._waiting:
            await super().release(connection)
        else:
            await ConnectionPool.release(self, connection)
