"""``RedisManager``: owns a service's Redis client from start-up to shut-down."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

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
from actionbus.exceptions import ClientNotInitializedError

__all__ = ["RedisManager"]

logger = logging.getLogger("actionbus.redis")


class RedisManager:
    """Create, check and close the pooled ``redis.asyncio`` client of one service.

    ``await initialize()`` connects and pings (failing within the connect timeout with
    the host and port named, password masked); ``get_client()`` returns the client;
    ``await close()`` releases it and may be called any number of times. Also usable as
    ``async with RedisManager(settings) as manager``.
    """

    def __init__(self, settings: CommonAppSettings) -> None:
        self.settings = settings
        self._client: AnyRedis | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def is_initialized(self) -> bool:
        """True between a successful ``initialize()`` and ``close()``."""
        return self._client is not None

    async def initialize(self) -> AnyRedis:
        """Connect and ping; return the client. Calling it again returns the same client."""
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # concurrent callers share one client
            if self._client is None:
                client = create_redis_client(self.settings)
                try:
                    with translate_errors(_unreachable(self.settings)):
                        await ping_or_raise(client, self.settings)
                except BaseException:
                    await close_redis_client(client)
                    raise
                self._client = client
                logger.info("connected to Redis at %s", describe(self.settings))
        return self._client

    def get_client(self) -> AnyRedis:
        """The connected client; raises ``ClientNotInitializedError`` before ``initialize()``."""
        if self._client is None:
            raise ClientNotInitializedError(
                f"RedisManager for service {self.settings.service_name!r} is not initialized: "
                "call `await manager.initialize()` (or use `async with RedisManager(...)`) first"
            )
        return self._client

    async def close(self) -> None:
        """Close the client and its pool; safe to call more than once."""
        client, self._client = self._client, None
        if client is not None:
            mark_closed(client)
            await close_redis_client(client)
            logger.info("closed Redis connection to %s", describe(self.settings))

    async def __aenter__(self) -> RedisManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "initialized" if self._client is not None else "not initialized"
        return f"RedisManager({describe(self.settings)}, {state})"
