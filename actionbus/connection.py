"""Build and check ``redis.asyncio`` clients from ``CommonAppSettings``.

One place decides every connection option, so ``RedisManager`` and ``RedisPool`` agree.
The pool is a ``WaitingConnectionPool``: when all ``redis_max_connections`` are busy a
command waits up to ``redis_pool_timeout`` for one instead of failing at once, and when
one is free it is taken without the waiting machinery.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actionbus.config import CommonAppSettings, mask_url
from actionbus.exceptions import RedisConnectionError
from actionbus.pool import WaitingConnectionPool

__all__ = ["AnyRedis", "connection_options", "create_redis_client", "ping_or_raise"]

AnyRedis: TypeAlias = Redis | RedisCluster
"""Either client actionbus accepts: standalone/Sentinel-backed ``Redis`` or ``RedisCluster``."""


def connection_options(settings: CommonAppSettings) -> dict[str, Any]:
    """The socket and decoding options shared by standalone and cluster clients."""
    options: dict[str, Any] = {
        "decode_responses": settings.redis_decode_responses,
        "socket_connect_timeout": settings.redis_socket_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": settings.redis_health_check_interval,
        "socket_keepalive": settings.redis_socket_keepalive,
        # A pooled connection broken by a server restart is replaced transparently.
        "retry": Retry(
            EqualJitterBackoff(cap=1.0, base=0.05),
            settings.redis_retries,
            (RedisConnError, RedisTimeoutError),
        ),
    }
    if settings.redis_socket_keepalive_options:
        options["socket_keepalive_options"] = dict(settings.redis_socket_keepalive_options)
    return options


def create_redis_client(settings: CommonAppSettings) -> AnyRedis:
    """Create (without connecting) the client the settings describe."""
    url = settings.effective_redis_url
    options = connection_options(settings)
    if settings.redis_cluster:
        return RedisCluster.from_url(url, max_connections=settings.redis_max_connections, **options)
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout,
        **options,
    )
    return Redis.from_pool(pool)


def describe(settings: CommonAppSettings) -> str:
    """Host and port (or socket path) of the configured server, for error messages."""
    return mask_url(settings.effective_redis_url)


async def ping_or_raise(client: AnyRedis, settings: CommonAppSettings) -> None:
    """PING the server; raise ``RedisConnectionError`` naming the masked URL on failure."""
    try:
        async with asyncio.timeout(settings.redis_socket_connect_timeout):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise RedisConnectionError(
            f"cannot reach Redis at {describe(settings)} within "
            f"{settings.redis_socket_connect_timeout}s: {type(exc).__name__}: "
            f"{mask_url(str(exc))}. Check that the server runs and REDIS_URL/redis_host/"
            "redis_port point at it."
        ) from exc
