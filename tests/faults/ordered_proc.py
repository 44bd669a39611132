"""A worker process for the ordering fault test: ``python ordered_proc.py '<json config>'``.

Config keys: ``url``, ``partitions``, ``fail_rate`` (chance that an attempt raises),
``worker`` (WorkerSettings fields). Each handled ``okeys.item.step`` action does
``RPUSH okeys:log:<key> <n>`` and ``HINCRBY okeys:by_pid <pid> 1``; it sleeps a little
first so several keys overlap. Prints ``READY`` once consuming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
from typing import Any

from redis.asyncio import Redis

from actionbus import BaseWorker, CommonAppSettings, DomainAction, WorkerSettings

SERVICE = "okeys"


async def main(config: dict[str, Any]) -> None:
    settings = CommonAppSettings(_env_file=None, service_name=SERVICE, redis_url=config["url"],
                                 partitions={SERVICE: config["partitions"]})
    worker = BaseWorker(settings, worker_settings=WorkerSettings(**config.get("worker", {})))
    side = Redis.from_url(config["url"])
    fail_rate = float(config.get("fail_rate", 0))
    pid = str(os.getpid())

    async def step(action: DomainAction, data: dict[str, Any]) -> None:
        await asyncio.sleep(random.uniform(0, 0.002))
        if random.random() < fail_rate:
            raise RuntimeError("random failure")
        pipe = side.pipeline(transaction=False)
        pipe.rpush(f"okeys:log:{data['key']}", data["n"])
        pipe.hincrby("okeys:by_pid", pid, 1)
        await pipe.execute()

    worker.register("okeys.item.step", step)
    await worker.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await worker.stop()
    await side.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(json.loads(sys.argv[1])))
