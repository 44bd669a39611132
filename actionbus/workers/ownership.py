"""``ConsumerLease``: one running process per consumer name.

Two processes with the same ``consumer_name`` would each take the other's pending entries
as their own and run them twice. At start the worker takes a lease on its name (``SET NX``
with a TTL, holding a random instance id) and refreshes it while it runs; a second process
with the same name waits one TTL (a crashed predecessor's lease lapses) and then refuses
to start with ``ConfigurationError``. A lease lost while running (e.g. a long outage and
another process took the name) is logged as an error on every refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from typing import Any

from actionbus.backoff import cancel_and_wait
from actionbus.connection import AnyRedis
from actionbus.exceptions import ConfigurationError
from actionbus.workers.context import WorkerContext
from actionbus.workers.failures import is_transient
from actionbus.workers.policy import safe_text

__all__ = ["RELEASE_LEASE", "ConsumerLease"]

logger = logging.getLogger("actionbus.worker")

_REFRESH = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Releases the lease KEYS[1] if ARGV[1] holds it (the consumer-name and ordering leases).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], '', 'PX', 1)  -- lapses at once; SET is in the worker's ACL
  return 1
end
return 0
"""


def lease_key(ctx: WorkerContext) -> str:
    """The lease key of the worker's (group, consumer) name, in its service's namespace."""
    digest = hashlib.sha256(f"{ctx.group}\0{ctx.consumer}".encode()).hexdigest()[:32]
    return ctx.queues.get_consumer_lease_key(ctx.service, digest)


class ConsumerLease:
    """The lease one worker holds on its consumer name while it runs."""

    def __init__(self, redis: AnyRedis, ctx: WorkerContext) -> None:
        self.redis = redis
        self.key = lease_key(ctx)
        self.name = f"{ctx.service}/{ctx.group}/{ctx.consumer}"
        self.instance = uuid.uuid4().hex
        self.ttl_ms = max(100, int(ctx.settings.consumer_lease_ttl_s * 1000))
        self._task: asyncio.Task[None] | None = None
        self._refresh = redis.register_script(_REFRESH)  # EVALSHA, loaded on demand
        self._release = redis.register_script(RELEASE_LEASE)

    @classmethod
    async def take(cls, redis: AnyRedis, ctx: WorkerContext) -> ConsumerLease:
        """Take the lease (waiting up to one TTL) and keep it; ``ConfigurationError`` if
        another running process holds the name."""
        lease = cls(redis, ctx)
        deadline = time.monotonic() + lease.ttl_ms / 1000 + 0.5
        while not await lease._try_take():
            if time.monotonic() >= deadline:
                holder: Any = await redis.get(lease.key)
                raise ConfigurationError(
                    f"consumer name {lease.name!r} is in use by another running worker "
                    f"(instance {safe_text(holder, 64)}): two processes with one consumer "
                    "name run actions twice. Give each process its own "
                    "WorkerSettings.consumer_name, or leave it unset (host-pid-random)"
                )
            await asyncio.sleep(min(0.2, lease.ttl_ms / 4000))
        lease._task = asyncio.create_task(lease._keep(), name=f"actionbus-lease:{lease.name}")
        return lease

    async def _try_take(self) -> bool:
        """``SET NX`` the lease; a transient refusal (OOM, a blip) counts as taken, so the
        worker starts and can free memory: the refresh loop takes the name once it can."""
        try:
            return bool(await self.redis.set(self.key, self.instance, nx=True, px=self.ttl_ms))
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("could not take the lease of consumer name %s now (%s); starting "
                           "anyway and taking it as soon as Redis accepts writes",
                           self.name, safe_text(exc))
            return True

    async def _keep(self) -> None:
        """Refresh every third of the TTL; never dies on an error (logged, retried)."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                held = await self._refresh(keys=[self.key], args=[self.instance, self.ttl_ms])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage: the read loop reports it; keep trying
                logger.debug("could not refresh the lease of %s: %s", self.name, safe_text(exc))
                continue
            if not held:
                logger.error(
                    "consumer name %r is now held by another process: two workers share it "
                    "and will run actions twice; give each process its own consumer_name",
                    self.name,
                )

    async def release(self) -> None:
        """Stop refreshing and free the name (best effort; it lapses after its TTL anyway)."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        with contextlib.suppress(Exception):
            await self._release(keys=[self.key], args=[self.instance])
