"""WaitingConnectionPool: free connections at once, waiting when exhausted, bounded writes."""

from __future__ import annotations

import asyncio
import enum
import os
import signal
from typing import Any

import pytest
from redis._parsers.encoders import Encoder
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actionbus.embedded import RedisServer
from actionbus.pool import WaitingConnectionPool


async def test_commands_wait_for_a_connection_when_all_are_busy(redis_url: str) -> None:
    """With max_connections=2, 20 concurrent blocking commands all complete by waiting."""
    client = Redis.from_pool(WaitingConnectionPool.from_url(redis_url, max_connections=2,
                                                            timeout=5))
    results = await asyncio.gather(*(client.blpop([f"none:{i}"], timeout=0.05)
                                     for i in range(20)))
    assert results == [None] * 20
    assert len(client.connection_pool._in_use_connections) == 0
    await client.aclose()


async def test_waiting_longer_than_the_pool_timeout_fails_clearly(redis_url: str) -> None:
    """A command that cannot get a connection within `timeout` raises ConnectionError."""
    client = Redis.from_pool(WaitingConnectionPool.from_url(redis_url, max_connections=1,
                                                            timeout=0.1))
    holder = asyncio.create_task(client.blpop(["nothing"], timeout=1))
    await asyncio.sleep(0.05)
    with pytest.raises(RedisConnError, match="No connection available"):
        await client.ping()
    await holder
    await client.aclose()


async def test_a_write_to_a_server_that_stopped_reading_times_out(
    fresh_redis_server: RedisServer,
) -> None:
    """With socket_timeout set, a command to a server that reads nothing times out.

    redis-py 8 blocks in the write (its buffer stays full); redis-py 5 buffers the write
    and times out on the read. Either way the caller gets TimeoutError, not a hang.
    """
    client = Redis.from_pool(WaitingConnectionPool.from_url(fresh_redis_server.url,
                                                            socket_timeout=0.5))
    await client.ping()
    assert fresh_redis_server.pid is not None
    os.kill(fresh_redis_server.pid, signal.SIGSTOP)  # alive, but reads nothing
    try:
        with pytest.raises(RedisTimeoutError, match=r"Timeout (writing|reading)"):
            await client.set("k", b"x" * 64_000_000)
    finally:
        os.kill(fresh_redis_server.pid, signal.SIGCONT)
    await client.aclose()
    await asyncio.sleep(0.5)  # redis-py 5 closes gracefully: let it flush to the resumed server


class _Color(enum.IntEnum):
    RED = 1


class _Text(str):
    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"encoded by the subclass"


_PACKED = [
    ("XACK", "actionbus:dev:{svc}:actions", "svc", b"1764551234567-0", b"1764551234567-1"),
    ("SET", "k", 1), ("SET", "k", -7), ("SET", "k", 2**70), ("SET", "k", 1.5),
    ("SET", "k", 0.1), ("SET", "k", float("inf")), ("SET", "k", -0.0),
    ("SET", "k", "é"), ("SET", "k", b"x" * 100_000), ("SET", "k", b""),
    ("SET", "k", True), ("SET", "k", _Color.RED), ("SET", "k", _Text("t")),
    ("SET", "k", bytearray(b"ba")), ("SET", "k", memoryview(b"mv")), ("SET", "k", None),
    ("SET", "k", "\udcff"), ("SET", "k", [1]), ("CONFIG GET", "maxmemory"),
    ("CONFIG\tGET", "maxmemory"), (b"CONFIG GET", "maxmemory"), (b"SET", "k", "v"),
]


def _packed(connection: Any, args: tuple[Any, ...]) -> Any:
    try:
        return b"".join(bytes(chunk) for chunk in connection.pack_command(*args))
    except Exception as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_commands_are_packed_to_the_bytes_redis_py_writes(encoding: str) -> None:
    """The pool's connections pack every command as redis-py's own asyncio connection
    does: the same bytes, or the same error (bool, None, a list, a lone surrogate), for
    ints and floats, subclasses (an IntEnum, a str with its own encode()), buffers, split
    command names and another encoding."""
    ours = WaitingConnectionPool(encoding=encoding).make_connection()
    theirs = Connection(encoding=encoding)
    for args in _PACKED:
        assert _packed(ours, args) == _packed(theirs, args), args


def test_plain_commands_are_packed_without_redis_pys_encoder() -> None:
    """An XACK of 100 byte ids is packed by hiredis in one piece, without a call of
    redis-py's encoder per argument (the ~5,000 instructions each it costs)."""

    class CountingEncoder(Encoder):
        calls = 0

        def encode(self, value: Any) -> Any:
            CountingEncoder.calls += 1
            return super().encode(value)

    connection = WaitingConnectionPool().make_connection()
    connection.encoder = CountingEncoder("utf-8", "strict", False)
    ids = [f"1764551234567-{i}".encode() for i in range(100)]
    packed = connection.pack_command("XACK", "stream", "group", *ids)
    assert CountingEncoder.calls == 0
    assert packed == [b"".join(Connection().pack_command("XACK", "stream", "group", *ids))]


async def test_commands_packed_by_hiredis_reach_redis_intact(redis_url: str) -> None:
    """Values written through the pool read back as written: text, bytes, numbers."""
    client = Redis.from_pool(WaitingConnectionPool.from_url(redis_url))
    values = {"t": "é ü", "b": b"\x00\xff\r\n", "i": -12, "f": 0.1, "big": b"y" * 100_000}
    await client.mset(values)
    assert await client.mget(list(values)) == [
        "é ü".encode(), b"\x00\xff\r\n", b"-12", b"0.1", b"y" * 100_000]
    await client.aclose()
