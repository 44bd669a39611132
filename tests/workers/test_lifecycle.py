"""Worker lifecycle edge cases: stop requests racing with start-up."""

from __future__ import annotations

import asyncio

from actionbus import BaseWorker, CommonAppSettings, WorkerSettings


async def test_stop_requested_while_starting_is_not_lost(redis_url: str) -> None:
    """request_stop() during start() makes run() return instead of running on."""
    settings = CommonAppSettings(service_name="life", redis_url=redis_url)
    worker = BaseWorker(settings, worker_settings=WorkerSettings(block_ms=100))

    async def stop_soon() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        worker.request_stop()

    task = asyncio.create_task(stop_soon())
    await asyncio.wait_for(worker.run(), 5)
    await task
