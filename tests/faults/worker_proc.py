"""A worker in its own OS process, for fault tests: ``python worker_proc.py '<json config>'``.

Config keys: ``url``, ``cluster`` (the URL is a Redis Cluster node), ``partitions`` (of
the service, default 1), ``service``,
``sleep`` (seconds per action; an action's ``data["sleep"]`` overrides it), ``fail``
(always raise), ``crash_before_ack`` (exit at the first acknowledgement, after the side
effect), ``idempotent``, ``log_file``, ``worker`` (WorkerSettings fields),
``crash_in_retry`` (``"before"``/``"after"``: exit at the first retry, before or after it
is parked in the delayed set and acknowledged). Every handled action does ``HINCRBY
faults:handled <i> 1``; with ``trace`` it also logs start/end to a list. Prints ``READY``
once consuming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

from redis.asyncio import Redis, RedisCluster

from actionbus import BaseWorker, CommonAppSettings, DomainAction, WorkerSettings


async def main(config: dict[str, Any]) -> None:
    cluster = bool(config.get("cluster"))
    service = config.get("service", "faults")
    settings = CommonAppSettings(service_name=service,
                                 redis_url=config["url"], redis_socket_timeout=5,
                                 redis_cluster=cluster,
                                 partitions={service: int(config.get("partitions", 1))})
    worker = BaseWorker(settings, worker_settings=WorkerSettings(**config.get("worker", {})))
    side = (RedisCluster if cluster else Redis).from_url(config["url"])
    if isinstance(side, RedisCluster):  # redis-py: concurrent first commands on a cluster
        await side.initialize()  # client that has no slot map yet fail (AttributeError)
    sleep = float(config.get("sleep", 0))
    pid = os.getpid()

    async def run(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        i = str(data["i"])
        if config.get("trace"):
            await side.rpush("faults:trace", f"start:{i}:{pid}")
        pause = float(data.get("sleep", sleep))  # an action's own "sleep" wins
        if pause:
            await asyncio.sleep(pause)
        if config.get("fail"):
            raise RuntimeError(f"handler for {i} always fails")
        await side.hincrby("faults:handled", i, 1)
        if config.get("trace"):
            await side.rpush("faults:trace", f"end:{i}:{pid}")
        return {"i": data["i"]}

    worker.register("faults.job.run", run, idempotent=bool(config.get("idempotent")))

    if config.get("crash_before_ack"):
        def crash(entry_id: str) -> None:
            os._exit(17)  # the side effect happened; the ack never will

        worker.before_ack = crash  # the worker's fault-injection seam

    if config.get("crash_in_retry"):
        real_retry = worker.policy.retry

        async def crashing_retry(*args: Any, **kwargs: Any) -> bool:
            if config["crash_in_retry"] == "before":
                os._exit(17)  # failed attempt not yet parked nor acknowledged
            result = await real_retry(*args, **kwargs)
            os._exit(17)  # parked and acknowledged; the process dies before anything else
            return result

        worker.policy.retry = crashing_retry  # type: ignore[method-assign]

    await worker.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await worker.stop()
    await side.aclose()


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    log_file = cfg.get("log_file")
    logging.basicConfig(
        filename=log_file, level=logging.INFO if log_file else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(main(cfg))
