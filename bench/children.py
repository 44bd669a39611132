"""The benchmark's other processes: consumers and responders for each side.

``python bench/children.py ROLE --url URL ...`` connects, prints ``READY`` on stdout,
optionally waits for a token on the ``--go`` list (so the parent can time from one
instant), then consumes until SIGTERM. Roles:

- ``ab-worker``: an actionbus ``BaseWorker`` with a no-op handler (it answers pseudo-sync
  calls with an empty success response); ``await worker.run()`` stops on SIGTERM.
- ``raw-drain``: XREADGROUP COUNT 100 + ``json.loads`` + one XACK per batch.
- ``raw-responder``: XREADGROUP, then per batch one pipeline of LPUSH replies + one XACK.
- ``fs-drain`` / ``fs-responder``: a FastStream consumer-group stream subscriber
  (``max_records=100``, logging off); the responder returns a reply to ``request()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import app_settings, faststream_broker, quiet_logging, run
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from actionbus import BaseWorker, DomainAction, WorkerSettings

READ_COUNT = 100
BLOCK_MS = 100
GO_TIMEOUT_S = 120


def ready() -> None:
    """Tell the parent this process is connected and about to wait for the go signal."""
    sys.stdout.write("READY\n")
    sys.stdout.flush()


async def wait_for_go(url: str, key: str | None, *, cluster: bool = False) -> None:
    """Block until the parent pushes a token on ``key`` (exit if none comes in time)."""
    ready()
    if key is None:
        return
    async with (RedisCluster.from_url(url) if cluster else Redis.from_url(url)) as redis:
        if await redis.blpop([key], timeout=GO_TIMEOUT_S) is None:
            sys.exit(f"no go signal on {key} within {GO_TIMEOUT_S}s")


@contextlib.contextmanager
def maybe_profiled(path: str | None) -> Iterator[None]:
    """With ``--profile PATH``: run the block under pyinstrument and write reports.

    ``PATH`` gets the call tree, ``PATH.self`` and ``PATH.total`` flat lists per function.
    """
    if path is None:
        yield
        return
    from pyinstrument import Profiler
    from pyinstrument.renderers import ConsoleRenderer

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        session = profiler.stop()
        Path(path).write_text(profiler.output_text(show_all=False))
        for mode in ("self", "total"):
            flat = ConsoleRenderer(flat=True, flat_time=mode, time="percent_of_total")
            Path(f"{path}.{mode}").write_text(flat.render(session))


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


async def ab_worker(args: argparse.Namespace) -> None:
    async def noop(action: DomainAction, data: Any) -> None:
        return None

    options: dict[str, Any] = {}
    if args.retention is not None:
        options["stream_retention"] = args.retention
    if args.maintenance is not None:
        options["maintenance_interval_s"] = args.maintenance
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if args.lanes:
        options["lanes"] = True
    cluster: dict[str, Any] = {"redis_cluster": True} if args.cluster else {}
    if args.partitions is not None:
        cluster["partitions"] = {args.service: args.partitions}
    worker = BaseWorker(
        app_settings(args.url, args.service, **cluster), worker_settings=WorkerSettings(**options)
    )
    worker.register(f"{args.service}.item.process", noop)
    await wait_for_go(args.url, args.go, cluster=args.cluster)
    with maybe_profiled(args.profile):
        await worker.run()


async def raw_loop(args: argparse.Namespace, *, respond: bool) -> None:
    client = RedisCluster.from_url(args.url) if args.cluster else Redis.from_url(args.url)
    async with client as redis:
        await redis.ping()
        with contextlib.suppress(ResponseError):  # BUSYGROUP: the parent made it already
            await redis.xgroup_create(args.stream, args.group, id="0", mkstream=True)
        await wait_for_go(args.url, args.go, cluster=args.cluster)  # SIGTERM ends it until then
        stop = stop_event()
        with maybe_profiled(args.profile):
            await consume(redis, args, respond=respond, stop=stop)


async def consume(
    redis: Redis | RedisCluster, args: argparse.Namespace, *, respond: bool, stop: asyncio.Event
) -> None:
    """The raw consumer loop: read a batch, decode it, answer (responder), acknowledge."""
    consumer = f"raw-{os.getpid()}"
    streams: Any = {args.stream: ">"}
    while not stop.is_set():
        reply: Any = await redis.xreadgroup(
            args.group, consumer, streams, count=READ_COUNT, block=BLOCK_MS
        )
        for _stream, entries in reply or ():
            ids = []
            pipe = redis.pipeline(transaction=False)
            for entry_id, fields in entries:
                request = json.loads(fields[b"data"])
                ids.append(entry_id)
                if respond:
                    answer = {"correlation_id": request["action_id"], "success": True}
                    pipe.lpush(request["reply_to"], json.dumps(answer))
            if not ids:
                continue
            if respond:
                pipe.xack(args.stream, args.group, *ids)
                await pipe.execute()
            else:
                await redis.xack(args.stream, args.group, *ids)


async def faststream_sub(args: argparse.Namespace, *, respond: bool) -> None:
    from faststream.redis import StreamSub

    broker = faststream_broker(args.url)
    sub = broker.subscriber(
        stream=StreamSub(
            args.stream, group=args.group, consumer=f"fs-{os.getpid()}", max_records=READ_COUNT
        )
    )
    if respond:

        @sub
        async def answer(body: dict[str, Any]) -> dict[str, Any]:
            return {"correlation_id": body.get("action_id"), "success": True}

    else:

        @sub
        async def handle(body: dict[str, Any]) -> None:
            return None

    await broker.connect()
    await wait_for_go(args.url, args.go)
    stop = stop_event()
    with maybe_profiled(args.profile):
        await broker.start()
        try:
            await stop.wait()
        finally:
            await broker.stop()


async def producer(args: argparse.Namespace) -> None:
    """Add ``--rate`` entries per second to ``--stream`` (pipelines every 10 ms) until
    SIGTERM: raw requests naming a sink list (raw side) or actions of ``--service``."""
    from common import raw_json

    async with Redis.from_url(args.url) as redis:
        await wait_for_go(args.url, args.go)
        stop = stop_event()
        per_tick, tick = max(1, args.rate // 100), 0.01
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            pipe = redis.pipeline(transaction=False)
            for _ in range(per_tick):
                if not args.raw:
                    payload = DomainAction(action_type=f"{args.service}.item.process",
                                           origin_service="bench-producer").model_dump_json()
                else:
                    payload = raw_json("benchload", reply_to="bench:load:sink")
                pipe.xadd(args.stream, {"data": payload})
            await pipe.execute()
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "role", choices=["ab-worker", "raw-drain", "raw-responder", "fs-drain", "fs-responder",
                         "producer"]
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--service", default="benchdrain",
                        help="ab-worker: its service; producer: the service of its actions")
    parser.add_argument("--stream", help="raw/fs: the stream to consume")
    parser.add_argument("--group", help="raw/fs: the consumer group")
    parser.add_argument("--go", help="wait for a token on this list before consuming")
    parser.add_argument("--retention", type=int, help="ab-worker: stream_retention")
    parser.add_argument("--maintenance", type=float, help="ab-worker: maintenance_interval_s")
    parser.add_argument("--concurrency", type=int, help="ab-worker: concurrency")
    parser.add_argument("--profile", help="write pyinstrument reports to this path")
    parser.add_argument("--lanes", action="store_true", help="ab-worker: read priority lanes")
    parser.add_argument("--cluster", action="store_true", help="ab-worker/raw: a Redis Cluster")
    parser.add_argument("--partitions", type=int, help="ab-worker: its service's partitions")
    parser.add_argument("--raw", action="store_true", help="producer: raw requests, not actions")
    parser.add_argument("--rate", type=int, default=10_000, help="producer: entries per second")
    return parser.parse_args(argv)


def main() -> None:
    quiet_logging()
    args = parse_args()
    role: str = args.role
    if role == "ab-worker":
        run(ab_worker(args))
    elif role == "producer":
        run(producer(args))
    elif role.startswith("raw-"):
        run(raw_loop(args, respond=role == "raw-responder"))
    else:
        run(faststream_sub(args, respond=role == "fs-responder"))


if __name__ == "__main__":
    main()
