"""Build and check ``redis.asyncio`` clients from ``CommonAppSettings``.

One place decides every connection option, so ``RedisManager`` and ``RedisPool`` agree.
The pool is a ``WaitingConnectionPool``: when all ``redis_max_connections`` are busy a
command waits up to ``redis_pool_timeout`` for one instead of failing at once, and when
one is free it is taken without the waiting machinery.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actionbus.config import CommonAppSettings, mask_url
from actionbus.exceptions import RedisConnectionError
from actionbus.pool import (
    WaitingConnectionPool,
    WaitingRedisCluster,
    WaitingSentinelConnectionPool,
)

__all__ = [
    "AnyRedis",
    "close_redis_client",
    "connection_options",
    "create_redis_client",
    "ping_or_raise",
]

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


def _sentinel_master(settings: CommonAppSettings, options: dict[str, Any]) -> Redis:
    """A client of the current master, found (and re-found after a failover) via sentinels."""
    assert settings.redis_sentinel_master is not None
    addresses = []
    for address in settings.redis_sentinels:
        host, _, port = address.rpartition(":")
        addresses.append((host, int(port)))
    sentinel_options = {
        "socket_connect_timeout": settings.redis_socket_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
    }
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addresses, sentinel_kwargs=sentinel_options
    )
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=Redis,
        db=settings.redis_db,
        username=settings.redis_username,
        password=password,
        ssl=settings.redis_ssl,
        max_connections=settings.redis_max_connections,
        connection_pool_class=WaitingSentinelConnectionPool,
        timeout=settings.redis_pool_timeout,
        **options,
    )
    _SENTINELS[client] = sentinel
    return client


_SENTINELS: weakref.WeakKeyDictionary[Redis, Sentinel] = weakref.WeakKeyDictionary()
"""The sentinel links behind each Sentinel-managed client, closed with the client."""


async def close_redis_client(client: AnyRedis) -> None:
    """Close a client from ``create_redis_client`` and, for Sentinel, its sentinel links."""
    await client.aclose()
    sentinel = _SENTINELS.pop(client, None) if isinstance(client, Redis) else None
    if sentinel is not None:
        for link in sentinel.sentinels:
            await link.aclose()


def create_redis_client(settings: CommonAppSettings) -> AnyRedis:
    """Create (without connecting) the client the settings describe.

    Standalone by default; ``redis_cluster`` selects the cluster client; ``redis_sentinels``
    and ``redis_sentinel_master`` find the master through Sentinel.
    """
    url = settings.effective_redis_url
    options = connection_options(settings)
    if settings.redis_sentinels:
        return _sentinel_master(settings, options)
    if settings.redis_cluster:
        return WaitingRedisCluster.from_url(
            url, max_connections=settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout, **options,
        )
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout,
        **options,
    )
    return Redis.from_pool(pool)


def describe(settings: CommonAppSettings) -> str:
    """Where the configured server is, for messages: its URL (password masked) or sentinels."""
    if settings.redis_sentinels:
        return (f"master {settings.redis_sentinel_master!r} via sentinels "
                f"{', '.join(settings.redis_sentinels)}")
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
