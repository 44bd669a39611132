"""RedisManager: initialize pings, clear errors, get_client, idempotent close, async with."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from actionbus import (
    ActionBusError,
    ClientNotInitializedError,
    CommonAppSettings,
    RedisConnectionError,
    RedisManager,
)

Settings = Callable[..., CommonAppSettings]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_initialize_pings_and_returns_client(make_settings: Settings) -> None:
    """initialize() connects, pings and returns the redis.asyncio client get_client() gives."""
    manager = RedisManager(settings=make_settings())
    assert not manager.is_initialized
    client = await manager.initialize()
    try:
        assert isinstance(client, Redis)
        assert manager.get_client() is client
        assert manager.is_initialized
        assert await client.ping()
    finally:
        await manager.close()


async def test_initialize_twice_returns_same_client(make_settings: Settings) -> None:
    """A second initialize() returns the already connected client."""
    manager = RedisManager(make_settings())
    try:
        assert await manager.initialize() is await manager.initialize()
    finally:
        await manager.close()


async def test_concurrent_initialize_shares_one_client(make_settings: Settings) -> None:
    """Concurrent initialize() calls return the one client the manager keeps."""
    manager = RedisManager(make_settings())
    clients = await asyncio.gather(manager.initialize(), manager.initialize())
    try:
        assert clients[0] is clients[1]
        assert manager.get_client() is clients[0]
    finally:
        await manager.close()
        for client in clients:  # a leaked client would warn in a later test
            await client.aclose()


async def test_unreachable_port_fails_fast_naming_host_and_port() -> None:
    """On a closed port initialize() raises RedisConnectionError within the connect timeout."""
    port = _closed_port()
    settings = CommonAppSettings(
        _env_file=None, service_name="tests", redis_url=f"redis://127.0.0.1:{port}/0",
        redis_socket_connect_timeout=1,
    )
    manager = RedisManager(settings)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}") as info:
        await manager.initialize()
    assert time.monotonic() - started < 1 + 2  # generous: a loaded machine is slow too
    assert isinstance(info.value, ActionBusError)
    assert not manager.is_initialized
    with pytest.raises(ClientNotInitializedError):
        manager.get_client()


async def test_silent_server_fails_within_connect_timeout() -> None:
    """A port that accepts TCP but never answers fails within the connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # never accept(): the handshake completes, no reply ever comes
        port = listener.getsockname()[1]
        settings = CommonAppSettings(
            _env_file=None, service_name="tests", redis_url=f"redis://127.0.0.1:{port}/0",
            redis_socket_connect_timeout=0.5,
        )
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}"):
            await RedisManager(settings).initialize()
        assert time.monotonic() - started < 0.5 + 2  # generous: a loaded machine is slow too


def test_get_client_before_initialize_raises(make_settings: Settings) -> None:
    """get_client() before initialize() raises ClientNotInitializedError saying what to do."""
    manager = RedisManager(make_settings(service_name="orders"))
    with pytest.raises(ClientNotInitializedError, match=r"'orders'.*initialize\(\)"):
        manager.get_client()


async def test_get_client_after_close_raises(make_settings: Settings) -> None:
    """After close() the manager no longer hands out its client."""
    manager = RedisManager(make_settings())
    await manager.initialize()
    await manager.close()
    with pytest.raises(ClientNotInitializedError):
        manager.get_client()


async def test_close_is_idempotent(make_settings: Settings) -> None:
    """close() may be called before initialize() and any number of times after."""
    manager = RedisManager(make_settings())
    await manager.close()
    await manager.initialize()
    await manager.close()
    await manager.close()
    assert not manager.is_initialized


async def test_can_reinitialize_after_close(make_settings: Settings) -> None:
    """initialize() after close() connects again with a new client."""
    manager = RedisManager(make_settings())
    first = await manager.initialize()
    await manager.close()
    second = await manager.initialize()
    try:
        assert second is not first
        assert await second.ping()
    finally:
        await manager.close()


async def test_async_with_initializes_and_closes(make_settings: Settings) -> None:
    """``async with RedisManager(...)`` yields an initialized manager and closes it on exit."""
    async with RedisManager(make_settings()) as manager:
        assert await manager.get_client().set("k", "v")
    assert not manager.is_initialized


async def test_async_with_closes_on_error(make_settings: Settings) -> None:
    """An exception inside ``async with`` still closes the manager and propagates."""
    manager = RedisManager(make_settings())
    with pytest.raises(KeyError):
        async with manager:
            raise KeyError("boom")
    assert not manager.is_initialized


async def test_decode_responses_setting_applies(make_settings: Settings) -> None:
    """redis_decode_responses controls whether replies come back as str or bytes."""
    async with RedisManager(make_settings(redis_decode_responses=True)) as manager:
        await manager.get_client().set("k", "v")
        assert await manager.get_client().get("k") == "v"
    async with RedisManager(make_settings()) as manager:
        assert await manager.get_client().get("k") == b"v"


def test_repr_masks_password() -> None:
    """repr(RedisManager) names the server but not its password."""
    settings = CommonAppSettings(
        _env_file=None, service_name="tests", redis_url="redis://:topsecret@127.0.0.1:1/0"
    )
    text = repr(RedisManager(settings))
    assert "127.0.0.1:1" in text
    assert "topsecret" not in text
    assert "not initialized" in text


async def test_repr_says_whether_the_manager_is_initialized(make_settings: Settings) -> None:
    """repr(RedisManager) ends in ", not initialized)" before initialize() and after close(),
    and in ", initialized)" while it holds a client."""
    manager = RedisManager(make_settings())
    assert repr(manager).endswith(", not initialized)")
    async with manager:
        assert repr(manager).endswith(", initialized)")
    assert repr(manager).endswith(", not initialized)")
