"""Priority lanes on the sending side: which stream a ``priority=`` send goes to.

A service's workers that read lanes keep a descriptor key alive
(``QueueManager.get_lanes_key``, with a TTL). A sender routes ``priority="high"`` or
``"low"`` to that lane's stream only while the descriptor exists; otherwise, and for
``"normal"`` or no priority, to the main stream, which every worker reads (a service in
another language that reads only the main stream keeps receiving everything).
"""

from __future__ import annotations

import asyncio
import logging
import time

from actionbus.clients.guard import CLIENT_FAILURES
from actionbus.clients.queue_manager import LANES, QueueManager
from actionbus.connection import AnyRedis
from actionbus.exceptions import InvalidNameError

__all__ = ["LaneRouter", "check_priority"]

logger = logging.getLogger("actionbus.client")

_MAX_CACHED = 1000


def check_priority(priority: str | None) -> str | None:
    """``priority`` if it is ``None`` or a lane name, else ``InvalidNameError``."""
    if priority is not None and priority not in LANES:
        raise InvalidNameError(
            f"priority {priority!r} is not a lane; nothing was sent: use one of "
            f"{', '.join(LANES)} (or leave it out)"
        )
    return priority


class LaneRouter:
    """Learns (and caches for ``cache_s``) which targets read lanes."""

    def __init__(self, redis: AnyRedis, queues: QueueManager, cache_s: float) -> None:
        self.redis = redis
        self.queues = queues
        self.cache_s = cache_s
        self._known: dict[str, tuple[float, frozenset[str]]] = {}
        self._reading: dict[str, asyncio.Task[frozenset[str]]] = {}  # one GET per target

    def stale(self, target: str) -> bool:
        """Whether ``lanes_of(target)`` would read the descriptor (nothing cached lately)."""
        known = self._known.get(target)
        return known is None or known[0] <= time.monotonic()

    async def lane(self, target: str, priority: str | None) -> str | None:
        """The lane to send to (``None``: the main stream)."""
        if priority is None or priority == "normal":
            return None
        lanes = await self.lanes_of(target)
        return priority if priority in lanes else None

    async def lanes_of(self, target: str) -> frozenset[str]:
        """The lanes ``target``'s workers announce (empty: main stream only)."""
        now = time.monotonic()
        known = self._known.get(target)
        if known is not None and known[0] > now:
            return known[1]
        reading = self._reading.get(target)
        if reading is None:  # concurrent callers share one read (its own task: a caller
            # that gives up does not cancel the others' answer)
            reading = self._reading[target] = asyncio.create_task(self._read(target, now))
            reading.add_done_callback(lambda task: self._done(target, task))
        return await asyncio.shield(reading)

    def _done(self, target: str, task: asyncio.Task[frozenset[str]]) -> None:
        self._reading.pop(target, None)
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller gave up

    async def _read(self, target: str, now: float) -> frozenset[str]:
        try:
            raw = await self.redis.get(self.queues.get_lanes_key(target))
        except CLIENT_FAILURES as exc:  # the main stream is always read: use it (the send
            # itself then reports a broken or closed connection)
            logger.debug("could not read the lanes of %s (%s); sending to its main stream",
                         target, exc)
            return frozenset()
        text = raw.decode() if isinstance(raw, bytes) else (raw or "")
        lanes = frozenset(part for part in text.split(",") if part in LANES)
        if len(self._known) >= _MAX_CACHED:
            self._known.clear()
        self._known[target] = (now + self.cache_s, lanes)
        return lanes
