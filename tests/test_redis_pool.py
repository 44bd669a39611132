"""redis_pool (seed 003): singleton RedisPool, one client under concurrency, close and reopen."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from actionbus import CommonAppSettings, RedisConnectionError
from actionbus.redis_pool import RedisPool, close_redis_pool, get_redis_client, redis_pool

Settings = Callable[..., CommonAppSettings]

# ``actionbus.redis_pool`` as an attribute is the instance (re-exported by the package);
# the module itself is reached through sys.modules.
pool_module = sys.modules["actionbus.redis_pool"]


@pytest_asyncio.fixture(autouse=True)
async def closed_pool() -> AsyncIterator[None]:
    """Every test starts and ends with the process-wide pool closed."""
    await close_redis_pool()
    yield
    await close_redis_pool()


def test_redis_pool_is_a_singleton() -> None:
    """RedisPool() always returns the one instance, which is ``redis_pool``."""
    assert RedisPool() is RedisPool()
    assert RedisPool() is redis_pool


async def test_get_redis_client_returns_working_client(make_settings: Settings) -> None:
    """get_redis_client(settings) returns a pinged redis.asyncio client."""
    client = await get_redis_client(make_settings(redis_decode_responses=True))
    assert isinstance(client, Redis)
    await client.set("mi_clave_async", "mi_valor_async")
    assert await client.get("mi_clave_async") == "mi_valor_async"


async def test_get_client_method_and_helper_share_client(make_settings: Settings) -> None:
    """redis_pool.get_client() and get_redis_client() hand out the same client."""
    settings = make_settings()
    assert await redis_pool.get_client(settings) is await get_redis_client(settings)


async def test_concurrent_callers_create_exactly_one_client(
    make_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 tasks asking at once get the same client, and only one client is created."""
    created: list[Any] = []
    real_create = pool_module.create_redis_client

    def counting_create(settings: CommonAppSettings) -> Any:
        client = real_create(settings)
        created.append(client)
        return client

    monkeypatch.setattr(pool_module, "create_redis_client", counting_create)
    settings = make_settings()
    clients = await asyncio.gather(*(get_redis_client(settings) for _ in range(100)))
    assert len(created) == 1
    assert all(client is clients[0] for client in clients)


async def test_close_then_get_creates_fresh_client(make_settings: Settings) -> None:
    """After close_redis_pool() the next get_redis_client() builds and pings a new client."""
    settings = make_settings()
    first = await get_redis_client(settings)
    await close_redis_pool()
    second = await get_redis_client(settings)
    assert second is not first
    assert await second.ping()


async def test_close_is_harmless_when_nothing_open() -> None:
    """close_redis_pool() and redis_pool.close() may be called with no client open."""
    await close_redis_pool()
    await redis_pool.close()


async def test_unreachable_server_raises_and_pool_recovers(make_settings: Settings) -> None:
    """A failed first connection raises RedisConnectionError and leaves no broken client."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bad = CommonAppSettings(
        _env_file=None, service_name="tests", redis_url=f"redis://127.0.0.1:{port}/0"
    )
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}"):
        await get_redis_client(bad)
    assert await (await get_redis_client(make_settings())).ping()


async def test_seed_parameters_applied(make_settings: Settings) -> None:
    """The seed's redis_* settings reach the pooled client's connection options."""
    settings = make_settings(
        redis_max_connections=3, redis_socket_connect_timeout=2.5, redis_health_check_interval=7
    )
    client = await get_redis_client(settings)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.max_connections == 3
    assert kwargs["socket_connect_timeout"] == 2.5
    assert kwargs["health_check_interval"] == 7


def test_the_submodule_is_not_shadowed_by_the_instance() -> None:
    """`import actionbus.redis_pool` gives the module, whose `redis_pool` is the singleton."""
    import actionbus.redis_pool as module

    assert module.__name__ == "actionbus.redis_pool"
    assert isinstance(module.redis_pool, module.RedisPool)
