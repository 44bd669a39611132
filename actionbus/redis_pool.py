"""The process-wide Redis client of seed 003: ``RedisPool``, ``redis_pool`` and helpers.

``RedisPool`` is a singleton; its client is created once, even when many tasks ask at
the same time (creation is guarded by an ``asyncio.Lock``). After ``close()`` the next
``get_client()`` creates a fresh client. Everything is async.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from actionbus.clients.guard import mark_closed, translate_errors
from actionbus.clients.guard import unreachable as _unreachable
from actionbus.config import CommonAppSettings
from actionbus.connection import (
    AnyRedis,
    close_redis_client,
    create_redis_client,
    describe,
    ping_or_raise,
)

__all__ = ["RedisPool", "close_redis_pool", "get_redis_client", "redis_pool"]

logger = logging.getLogger("actionbus.redis")


class RedisPool:
    """Singleton owner of one pooled ``redis.asyncio`` client per process."""

    _instance: ClassVar[RedisPool | None] = None
    _client: AnyRedis | None
    _lock: asyncio.Lock | None

    def __new__(cls) -> RedisPool:
        if cls._instance is None:
            instance = super().__new__(cls)
            instance._client = None
            instance._lock = None
            cls._instance = instance
        return cls._instance

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def get_client(self, settings: CommonAppSettings) -> AnyRedis:
        """Return the shared client, creating and pinging it on first use."""
        if self._client is not None:
            return self._client
        async with self._get_lock():
            if self._client is None:
                client = create_redis_client(settings)
                try:
                    with translate_errors(_unreachable(settings)):
                        await ping_or_raise(client, settings)
                except BaseException:
                    await close_redis_client(client)
                    raise
                self._client = client
                logger.info("Redis pool connected to %s", describe(settings))
        return self._client

    async def close(self) -> None:
        """Close the shared client; the next ``get_client()`` creates a new one."""
        client, self._client = self._client, None
        self._lock = None
        if client is not None:
            mark_closed(client)
            await close_redis_client(client)


redis_pool = RedisPool()
"""The process-wide ``RedisPool`` instance."""


async def get_redis_client(settings: CommonAppSettings) -> AnyRedis:
    """Shortcut for ``redis_pool.get_client(settings)``."""
    return await redis_pool.get_client(settings)


async def close_redis_pool() -> None:
    """Shortcut for ``redis_pool.close()``; harmless when nothing is open."""
    await redis_pool.close()
