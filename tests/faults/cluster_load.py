"""Traffic for the cluster fault tests: producers, pseudo-sync callers and workers of one
busy service, all in this process, counting in memory (not in Redis, which may lose data).

``Load.start()`` runs a durable producer (``wait_replicas=1``), a plain producer, a
pseudo-sync caller and two workers until ``stop()``; ``report()`` compares what was
acknowledged with what was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import RedisCluster

from actionbus import (
    ActionBusError,
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    NotReplicatedError,
    RedisManager,
    WorkerSettings,
)
from actionbus.clients import QueueManager

SERVICE = "hot"
STREAM = QueueManager().get_service_action_stream(SERVICE)


def settings(url: str, service: str, partitions: int = 1) -> CommonAppSettings:
    return CommonAppSettings(_env_file=None, service_name=service, redis_cluster=True,
                             redis_url=url, redis_socket_timeout=2,
                             redis_socket_connect_timeout=1, partitions={SERVICE: partitions})


@dataclass
class Producer:
    """Sends numbered actions one after another; remembers which sends returned an id."""

    name: str
    wait_replicas: int
    acked: set[int] = field(default_factory=set)
    acked_at: dict[int, float] = field(default_factory=dict)
    entry_ids: dict[int, str] = field(default_factory=dict)
    errors: int = 0
    not_replicated: int = 0
    last_ok: float = 0.0


@dataclass
class Load:
    url: str
    partitions: int = 1
    """``SERVICE``'s partition count (senders and workers)."""
    handled: Counter[int] = field(default_factory=Counter)
    handled_at: dict[int, float] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    calls_ok: int = 0
    calls_timed_out: int = 0
    calls_failed: int = 0
    workers: list[BaseWorker] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _managers: list[RedisManager] = field(default_factory=list)
    _clients: list[BaseRedisClient] = field(default_factory=list)

    async def start(self) -> None:
        for _ in range(2):
            worker = BaseWorker(settings(self.url, SERVICE, self.partitions),
                                worker_settings=WorkerSettings(
                block_ms=200, reclaim_interval_s=0.5, reclaim_min_idle_ms=2000,
                retry_backoff_base_s=0.05, retry_backoff_max_s=0.2, check_permissions=False,
            ))
            worker.register("hot.job.run", self._handle)
            await worker.start()
            self.workers.append(worker)
        number = iter(range(0, 10**9, 1))
        for name, replicas in (("durable", 1), ("plain", 0)):
            producer = Producer(name, replicas)
            self.producers.append(producer)
            self._tasks.append(asyncio.create_task(self._produce(producer, number)))
        self._tasks.append(asyncio.create_task(self._call(number)))

    async def _handle(self, action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        i = int(data["i"])
        self.handled[i] += 1
        self.handled_at.setdefault(i, time.monotonic())
        return {"i": i}

    async def _client(self, service: str) -> BaseRedisClient:
        manager = RedisManager(settings(self.url, service))
        self._managers.append(manager)
        client = BaseRedisClient(service, await manager.initialize(),
                                 settings(self.url, service, self.partitions))
        self._clients.append(client)
        return client

    async def _produce(self, producer: Producer, number: Any) -> None:
        client = await self._client(f"load-{producer.name}")
        while not self._stop.is_set():
            i = next(number)
            self.sent_at[i] = time.monotonic()
            try:
                entry_id = await client.send_action_async(
                    DomainAction(action_type="hot.job.run", data={"i": i}),
                    wait_replicas=producer.wait_replicas, wait_timeout_ms=100,
                )
            except NotReplicatedError:
                producer.not_replicated += 1
            except ActionBusError:
                producer.errors += 1
                await asyncio.sleep(0.05)
            else:
                producer.acked.add(i)
                producer.acked_at[i] = time.monotonic()
                producer.entry_ids[i] = entry_id
                producer.last_ok = time.monotonic()
            await asyncio.sleep(0.01)

    async def _call(self, number: Any) -> None:
        client = await self._client("load-caller")
        while not self._stop.is_set():
            i = next(number)
            try:
                reply = await client.send_action_pseudo_sync(
                    DomainAction(action_type="hot.job.run", data={"i": i}), timeout=3)
            except ActionBusError:
                self.calls_failed += 1
                await asyncio.sleep(0.05)
                continue
            if reply is None:
                self.calls_timed_out += 1
            else:
                self.calls_ok += 1
            await asyncio.sleep(0.02)

    async def stop_producing(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_handled(self, timeout: float) -> None:
        """Wait (bounded) until every acknowledged send was handled."""
        deadline = time.monotonic() + timeout
        while self.lost():
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)

    def lost(self, name: str | None = None) -> set[int]:
        """Acknowledged sends (of producer ``name``, or all) never handled."""
        return {i for p in self.producers if name in (None, p.name) for i in p.acked
                if i not in self.handled}

    async def missing(self) -> dict[str, int]:
        """Per producer: acknowledged entries no longer in the stream (newer than its
        oldest entry, so trimmed ones do not count) — written, then lost by Redis."""
        present = set()
        for stream in QueueManager().get_partition_streams(SERVICE, self.partitions):
            entries = await self.workers[0].redis_client.xrange(stream)
            present |= {(e[0].decode() if isinstance(e[0], bytes) else e[0]) for e in entries}
        oldest = min(present, key=_id_key) if present else "0-0"
        return {p.name: sum(1 for entry in p.entry_ids.values()
                            if entry not in present and _id_key(entry) > _id_key(oldest))
                for p in self.producers}

    def first_handled_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` until an action sent after it was handled."""
        after = [self.handled_at[i] for i, at in self.sent_at.items()
                 if at > moment and i in self.handled_at]
        return min(after) - moment if after else None

    def resumed(self, name: str, moment: float) -> float | None:
        """Seconds from ``moment`` to the first send of producer ``name`` acked after it."""
        producer = next(p for p in self.producers if p.name == name)
        after = [at for at in producer.acked_at.values() if at > moment]
        return min(after) - moment if after else None

    def report(self, what: str, moment: float) -> str:
        durable, plain = self.producers
        return (
            f"{what}: plain sends resumed after {self.resumed('plain', moment) or -1:.1f}s, "
            f"sends with wait_replicas=1 after {self.resumed('durable', moment) or -1:.1f}s, "
            f"handling of new sends after "
            f"{self.first_handled_after(moment) or -1:.1f}s; acknowledged sends: "
            f"{len(durable.acked)} with wait_replicas=1 ({len(self.lost('durable'))} lost, "
            f"{durable.not_replicated} NotReplicatedError, {durable.errors} SendErrors), "
            f"{len(plain.acked)} plain ({len(self.lost('plain'))} lost, "
            f"{plain.errors} SendErrors); duplicates handled: "
            f"{sum(1 for c in self.handled.values() if c > 1)}; pseudo-sync calls: "
            f"{self.calls_ok} answered, {self.calls_timed_out} timed out, "
            f"{self.calls_failed} failed to send"
        )

    async def close(self) -> None:
        await self.stop_producing()
        for worker in self.workers:
            await worker.stop(grace=0.5)
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        for manager in self._managers:
            with contextlib.suppress(Exception):
                await manager.close()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def move_default_node(redis: Any, port: int) -> None:
    """Make the node on ``port`` the cluster client's default node (the worst case)."""
    assert isinstance(redis, RedisCluster)
    node = redis.get_node(host="127.0.0.1", port=port)
    assert node is not None
    redis.set_default_node(node)


async def until(check: Callable[[], object], timeout: float, what: str = "the condition") -> None:
    """Poll ``check`` every 50 ms until truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)
