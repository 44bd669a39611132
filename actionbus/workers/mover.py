"""The mover loop every worker runs: due delayed actions into the stream, schedules ticked.

Each round moves up to ``delayed_batch`` due actions of each delayed set (the service's,
and its lanes' when it reads lanes) with one script (``DelayedQueue.move_due_with``), ticks
the worker's schedules (``schedule.tick``), then sleeps until the next due time, never
longer than ``delayed_poll_s``: an earlier action added meanwhile by another process is
picked up within that cap. A full batch means more may be due, so the next round starts at
once. With N workers, N movers run; the scripts make each move and each tick happen once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from redis.exceptions import RedisError, ResponseError

from actionbus.backoff import OutageLog
from actionbus.connection import AnyRedis
from actionbus.delayed import DelayedQueue, seconds_until
from actionbus.schedule import Schedule, tick
from actionbus.workers.context import WorkerContext

__all__ = ["Mover"]

logger = logging.getLogger("actionbus.worker")


class Mover:
    """Moves one service's due delayed actions and fires its periodic ticks."""

    def __init__(
        self,
        ctx: WorkerContext,
        redis: AnyRedis,
        *,
        schedules: Sequence[Schedule] = (),
        outage: OutageLog,
        partition: int = 0,
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.delayed = DelayedQueue(redis, ctx.queues, ctx.service, partition=partition)
        """Partition ``k`` >= 1 of a partitioned service has its own set (and mover)."""
        self.lane_sets = [  # retries of lane entries wait in their lane's own set
            DelayedQueue(redis, ctx.queues, ctx.service, lane)
            for lane in ("high", "low") if ctx.lanes and not partition
        ]
        self.schedules = tuple(schedules) if not partition else ()
        self.outage = outage
        self.moved = 0
        self.lateness_ms: list[int] = []
        """Lateness of the last moves (bounded), for tests and the benchmark."""

    async def round(self) -> float:
        """One round: move, tick; return how long to sleep before the next one."""
        settings = self.ctx.settings
        report, *lane_reports = await self.delayed.move_due_with(  # one script, every set
            self.lane_sets, settings.delayed_batch)
        if report.moved:
            self.moved += report.moved
            self.lateness_ms.extend(report.lateness_ms)
            del self.lateness_ms[:-100_000]
        for lane_report in lane_reports:
            self.moved += lane_report.moved
            if lane_report.next_due_ms is not None and (
                    report.next_due_ms is None or lane_report.next_due_ms < report.next_due_ms):
                report = report._replace(next_due_ms=lane_report.next_due_ms)
        if self.schedules:
            for fired in await tick(self.redis, self.ctx.queues, self.ctx.service,
                                    self.schedules):
                if fired.outcome != "taken":
                    logger.info("schedule %s: tick %d %s", fired.name, fired.tick_ms,
                                fired.outcome)
        if report.moved >= settings.delayed_batch:
            return 0.0
        return seconds_until(report.next_due_ms, report.now_ms, settings.delayed_poll_s)

    async def run(self) -> None:
        """Rounds until cancelled; Redis errors are logged as an outage and retried."""
        while True:
            started = time.monotonic()
            try:
                pause = await self.round()
                if self.outage.in_outage:
                    self.outage.success()
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:  # e.g. a read-only replica after a failover
                logger.warning("moving delayed actions of %s failed: %s", self.ctx.service, exc)
                pause = self.ctx.settings.delayed_poll_s
            except (RedisError, OSError) as exc:
                self.outage.failure(exc)
                pause = self.ctx.settings.delayed_poll_s
            except Exception:  # never die silently: log, keep moving
                logger.exception("mover of %s failed; retrying", self.ctx.service)
                pause = max(1.0, self.ctx.settings.delayed_poll_s)
            # A round that took long already waited part of the pause.
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started) / 2))
