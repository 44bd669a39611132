"""A loopback TCP proxy that can hold one command of its clients until the test releases it."""

from __future__ import annotations

import asyncio
import contextlib


class HoldingProxy:
    """Forwards bytes to Redis; the first client chunk containing ``trigger`` waits for
    ``release`` (after ``held`` is set), so a test can act between two commands of a client."""

    def __init__(self, upstream_port: int, trigger: bytes) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, hold=True)),
            asyncio.create_task(self._pipe(up_reader, writer, hold=False)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                if hold and self.trigger in chunk and not self.held.is_set():
                    self.held.set()
                    await self.release.wait()
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()
