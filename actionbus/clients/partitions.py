"""Partitions and ordering keys on the sending side: which stream an action goes to.

A partitioned service's workers keep a descriptor alive
(``QueueManager.get_partitions_key``: their partition count, with a TTL). A sender uses
that count when it exists (cached for ``lanes_cache_s``), else ``settings.partitions``
(default 1). When both exist and disagree, the sender logs a warning once and follows
the workers: every sender then splits the same way the workers read, never silently
another way.

An action with an ``ordering_key`` goes to the ordered stream of partition
``partition_for_key(key, N)``; any other action to partition ``0, 1, … N-1`` in turn
(partition 0 is the service's main stream, so ``N = 1`` sends exactly as before).
"""

from __future__ import annotations

import asyncio
import logging
import time

from actionbus.clients.guard import CLIENT_FAILURES
from actionbus.clients.queue_manager import QueueManager
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.models.actions import DomainAction
from actionbus.partitions import MAX_PARTITIONS, partition_for_key

__all__ = ["PartitionRouter"]

logger = logging.getLogger("actionbus.client")

_MAX_CACHED = 1000


def parse_count(raw: object) -> int | None:
    """A descriptor's partition count, or ``None`` if absent or unreadable."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if isinstance(text, str) and text.isdigit() and 1 <= int(text) <= MAX_PARTITIONS:
        return int(text)
    return None


class PartitionRouter:
    """Learns (and caches) each target's partition count; picks an action's stream."""

    def __init__(
        self, redis: AnyRedis, queues: QueueManager, settings: CommonAppSettings
    ) -> None:
        self.redis = redis
        self.queues = queues
        self.configured = dict(settings.partitions)
        self.cache_s = settings.lanes_cache_s
        self._known: dict[str, tuple[float, int]] = {}
        self._turn: dict[str, int] = {}
        self._warned: set[tuple[str, int]] = set()
        self._reading: dict[str, asyncio.Task[int]] = {}  # one GET per target at a time
        self.mismatches = 0
        """How many times a target's workers announced another count than the settings."""

    def stale(self, target: str) -> bool:
        """Whether ``target``'s count must be (re)learnt before a send."""
        known = self._known.get(target)
        return known is None or known[0] <= time.monotonic()

    async def refresh(self, target: str) -> int:
        """Read ``target``'s descriptor; return the count to use (and cache it). Concurrent
        callers share one read (its own task: a caller that gives up cancels nobody's)."""
        reading = self._reading.get(target)
        if reading is None:
            reading = self._reading[target] = asyncio.create_task(self._read(target))
            reading.add_done_callback(lambda task: self._done(target, task))
        return await asyncio.shield(reading)

    def _done(self, target: str, task: asyncio.Task[int]) -> None:
        self._reading.pop(target, None)
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller gave up

    async def _read(self, target: str) -> int:
        configured = self.configured.get(target, 1)
        try:
            announced = parse_count(await self.redis.get(self.queues.get_partitions_key(target)))
        except CLIENT_FAILURES as exc:  # keep what we knew; the send reports the outage
            logger.debug("could not read the partitions of %s (%s)", target, exc)
            known = self._known.get(target)
            return known[1] if known else configured
        count = configured if announced is None else announced
        if announced is not None and announced != configured:
            self.mismatches += 1
            if (target, announced) not in self._warned:
                self._warned.add((target, announced))
                logger.warning(
                    "service %s: its workers read %d partition(s) but settings.partitions "
                    "says %d; sending to %d as the workers read (fix the setting)",
                    target, announced, configured, announced,
                )
        if len(self._known) >= _MAX_CACHED:
            self._known.clear()
        self._known[target] = (time.monotonic() + self.cache_s, count)
        return count

    def count(self, target: str) -> int:
        """The last known count of ``target`` (the setting before anything was learnt)."""
        known = self._known.get(target)
        return known[1] if known is not None else self.configured.get(target, 1)

    def stream(self, action: DomainAction) -> str:
        """The stream ``action`` goes to (its lane aside)."""
        target = action.target
        count = self.count(target)
        key = action.ordering_key
        if key is not None:
            return self.queues.get_ordered_stream(target, partition_for_key(key, count))
        if count == 1:
            return self.queues.get_service_action_stream(target)
        turn = self._turn.get(target, 0)
        self._turn[target] = (turn + 1) % count
        return self.queues.get_partition_stream(target, turn)
