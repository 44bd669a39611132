"""A silent network hang: connections that stop carrying data without being closed."""

from __future__ import annotations

import asyncio
import contextlib
import time

from actionbus import BaseRedisClient, BaseWorker, DomainAction, WorkerSettings
from actionbus.config import CommonAppSettings
from actionbus.embedded import RedisServer
from tests.faults.conftest import monitor, settings_for, wait_until


class BlackHoleProxy:
    """A loopback TCP proxy; ``black_hole()`` makes every open connection go silent forever."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.generation = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def black_hole(self) -> None:
        """Stop forwarding on all current connections, without closing them."""
        self.generation += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        born = self.generation
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, born))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, born: int) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if self.generation != born:
                        await asyncio.Event().wait()  # swallow: the peer never hears back
                    dst.write(data)
                    await dst.drain()
        finally:
            dst.close()

    async def close(self) -> None:
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_hung_connection_is_detected_and_replaced(fresh_redis_server: RedisServer) -> None:
    """A worker whose read connection goes silent replaces it after the socket timeout."""
    proxy = BlackHoleProxy(fresh_redis_server.port)
    await proxy.start()
    via_proxy = CommonAppSettings(service_name="faults",
                                  redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                                  redis_socket_timeout=1.5, redis_retries=1)
    worker = BaseWorker(via_proxy, worker_settings=WorkerSettings(block_ms=300))
    handled: list[int] = []

    @worker.handler("faults.job.run")
    async def run(action: DomainAction, data: dict[str, int]) -> None:
        handled.append(data["i"])

    direct = monitor(fresh_redis_server.url)
    client = BaseRedisClient("faults-client", direct, settings_for(fresh_redis_server.url))
    try:
        async with worker:
            await client.send_action_async(DomainAction(action_type="faults.job.run",
                                                        data={"i": 1}))
            await wait_until(lambda: _has(handled, 1), 5, "the first action")
            proxy.black_hole()
            hung_at = time.monotonic()
            await client.send_action_async(DomainAction(action_type="faults.job.run",
                                                        data={"i": 2}))
            await wait_until(lambda: _has(handled, 2), 20, "the action sent during the hang")
            recovered = time.monotonic() - hung_at
            print(f"[hang] silent connection (socket timeout 1.5 s): action handled "
                  f"{recovered:.2f} s after the hang began")
    finally:
        await client.close()
        await direct.aclose()
        await proxy.close()


async def _has(handled: list[int], n: int) -> bool:
    return len(handled) >= n
