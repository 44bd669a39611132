"""Connection pooling tuned for request/reply latency, with the same guarantees.

- ``WaitingConnectionPool``: like redis-py's ``BlockingConnectionPool`` (when all
  ``max_connections`` are busy a command waits up to ``timeout`` for one), but a free
  connection is taken directly, without entering a ``Condition`` and arming a timer.
- ``WaitingRedisCluster`` and ``WaitingSentinelConnectionPool`` give Redis Cluster and
  Sentinel the same semantics: with ``max_connections`` commands in flight, the next one
  waits up to ``redis_pool_timeout`` instead of failing with "Too many connections".
- Its connections and the cluster's write with a cheap deadline: with ``socket_timeout``
  set, redis-py wraps every write in ``asyncio.wait_for``, which creates a task per
  command (and, on Python 3.11, can swallow a cancellation). Here the write runs under
  ``asyncio.timeout`` instead; an expired write still disconnects and raises redis-py's
  ``TimeoutError``. Reads keep redis-py's own socket timeout.
- Its connections pack commands with hiredis (C) where redis-py's asyncio connection
  packs them in Python (~5,000 instructions per argument: a worker's ``XACK`` of 100 ids
  cost it ~5% of its CPU per action). The bytes sent are the same; any argument hiredis
  would write differently (``bool``, ``bytearray``, a subclass, a non-UTF-8 encoder…)
  goes through redis-py's packer as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeoutError

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis_pack = None

try:  # redis-py >= 6: a typed error for an exhausted pool
    from redis.exceptions import MaxConnectionsError
except ImportError:  # pragma: no cover - older redis-py: recognised by message
    MaxConnectionsError = RedisConnError  # type: ignore[assignment,misc]

__all__ = [
    "WaitingConnectionPool",
    "WaitingRedisCluster",
    "WaitingSentinelConnectionPool",
    "is_pool_exhausted",
]


def is_pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` says the pool had no free connection (not a server failure).

    redis-py's typed ``MaxConnectionsError`` where it exists; its message otherwise.
    """
    if MaxConnectionsError is not RedisConnError and isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(exc, RedisConnError) and "Too many connections" in str(exc)


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


_HIREDIS_TYPES = frozenset((str, bytes, int, float))
"""Argument types hiredis writes as redis-py's encoder does (``repr`` of an exact ``int`` or
``float``; ``str`` as UTF-8), given the default encoder (UTF-8, strict)."""


class _HiredisPacking:
    """Mixin for redis-py asyncio connection classes: ``pack_command`` by hiredis.

    The same bytes as redis-py's own packer: taken only for a plain command name (no
    whitespace: redis-py splits ``"CONFIG GET"`` into two arguments) and arguments of
    exactly ``str``, ``bytes``, ``int`` or ``float`` with the default encoder. Anything
    else (``bool``, ``None``, a buffer, a subclass: a ``str`` may override ``encode()``)
    goes to redis-py's packer, which encodes it or raises its own error as before.
    """

    encoder: Any

    def pack_command(self, *args: Any) -> list[Any]:
        name = args[0]
        encoder = self.encoder
        if (type(name) is str and name.isalnum() and _hiredis_pack is not None
                and encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
                and _HIREDIS_TYPES.issuperset(map(type, args))):
            return [_hiredis_pack(args)]  # a lone surrogate: the same UnicodeEncodeError
        return super().pack_command(*args)  # type: ignore[misc,no-any-return]


_DEADLINE_CLASSES: dict[type[Any], type[Any]] = {}


def _with_deadline_writes(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` with bounded writes (``_DeadlineWrites``) and hiredis packing."""
    if cls not in _DEADLINE_CLASSES:
        _DEADLINE_CLASSES[cls] = type(f"Deadline{cls.__name__}",
                                      (_DeadlineWrites, _HiredisPacking, cls), {})
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
                if not is_pool_exhausted(exc):
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


class WaitingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master pool with ``BlockingConnectionPool``'s waiting for a free slot.

    Passed to ``Sentinel.master_for(connection_pool_class=...)``; takes ``timeout``.
    """

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]


_HOLDING: ContextVar[bool] = ContextVar("actionbus_cluster_slot", default=False)


class _Gate:
    """At most ``limit`` operations in flight; the next waits up to ``timeout`` seconds."""

    def __init__(self, limit: int, timeout: float | None) -> None:
        self.limit = limit
        self.timeout = timeout
        self._slots = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if _HOLDING.get():  # nested call of an operation that holds a slot already
            yield
            return
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise MaxConnectionsError(
                    f"No connection available: all {self.limit} connections "
                    f"(redis_max_connections) stayed busy for {self.timeout}s "
                    "(redis_pool_timeout)"
                ) from None
        else:
            await self._slots.acquire()  # free: returns without suspending
        token = _HOLDING.set(True)
        try:
            yield
        finally:
            _HOLDING.reset(token)
            self._slots.release()


class _WaitingClusterPipeline(ClusterPipeline):
    """A cluster pipeline that waits for a slot of its client's gate before executing."""

    async def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Execute the queued commands once a connection slot is free."""
        gate: _Gate = self.cluster_client._gate  # type: ignore[attr-defined]
        async with gate.slot():
            return await super().execute(*args, **kwargs)


class WaitingRedisCluster(RedisCluster):
    """``RedisCluster`` whose connection limit waits like a ``BlockingConnectionPool``.

    redis-py's cluster nodes raise ``MaxConnectionsError`` at once when ``max_connections``
    are busy. Here at most ``max_connections`` commands or pipelines are in flight per
    client (each uses at most one connection per node), and the next one waits up to
    ``pool_timeout`` seconds, then raises ``MaxConnectionsError``. Only public methods
    (``execute_command``, ``pipeline``, ``ClusterPipeline.execute``) are overridden.
    """

    __slots__ = ("_gate",)

    def __init__(self, *args: Any, pool_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = _Gate(int(kwargs.get("max_connections", 100)), pool_timeout)
        # Deadline writes here too: redis-py's per-write ``asyncio.wait_for`` on Python 3.11
        # returns normally when a cancellation arrives just as the write ends, so a
        # cancelled worker loop would run on (and ``stop()`` wait for it forever).
        # ``connection_kwargs`` is the dict the nodes manager builds every node from.
        deadline: Any = _with_deadline_writes(self.connection_kwargs["connection_class"])
        self.connection_kwargs["connection_class"] = deadline
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = deadline

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run one command once a connection slot is free."""
        async with self._gate.slot():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        """A pipeline that waits for a connection slot when executed."""
        super().pipeline(transaction, shard_hint)  # redis-py's argument checks
        return _WaitingClusterPipeline(self, transaction)  # type: ignore[abstract]
