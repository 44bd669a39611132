"""Periodic actions: a cron expression or a fixed interval, fired once per tick across workers.

Each schedule keeps the last tick it fired in the service's hash
``{prefix}:{env}:{<service>}:schedules:main`` (field = schedule name, value = tick in epoch
ms). ``tick()`` plans, for each schedule, the latest tick at or before ``now``; one Lua script
then records it only if it is later than the recorded one and, in the same step, adds the
tick's action to the service's delayed set (due at the tick, so the mover delivers it at
once). Whichever of N workers runs it first fires the tick; the others find it recorded.
The tick's action has a deterministic ``action_id`` (from service, schedule name and tick).

Catch-up: ticks that passed while no worker ran are never fired one by one. With
``missed="fire_once"`` (default) the latest of them fires once when a worker returns; with
``missed="skip"`` it fires only if it is at most ``grace`` old, else it is recorded unfired.
A schedule seen for the first time starts with its next tick (nothing fires for the past).
Cron expressions are evaluated in UTC and need the ``[schedule]`` extra (``croniter``).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from actionbus.clients.queue_manager import QueueManager
from actionbus.connection import AnyRedis
from actionbus.delayed import to_epoch_ms
from actionbus.exceptions import ConfigurationError, DelayedActionError
from actionbus.models.actions import DomainAction
from actionbus.streams import text

__all__ = [
    "Schedule",
    "TickPlan",
    "TickResult",
    "fire_tick",
    "latest_tick",
    "plan_tick",
    "tick",
    "tick_action",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_IDS = uuid.UUID("6f1c3a52-7e0b-4d0c-9a43-5b7b0c2d8e11")  # namespace of tick action ids

# KEYS[1] schedules hash, KEYS[2] delayed set. ARGV[1] schedule name, ARGV[2] tick ms,
# ARGV[3] the tick's action JSON ('' = record without firing), ARGV[4] its due score.
# Returns 1 fired, 2 recorded unfired, 0 already recorded (this tick or a later one).
_TICK = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if last and last >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then return 2 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return 1
"""


def _croniter() -> Any:
    try:
        return importlib.import_module("croniter").croniter
    except ImportError:
        raise ConfigurationError(
            "cron schedules need croniter: pip install 'actionbus[schedule]' "
            "(or use every=timedelta(...))"
        ) from None


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A periodic action: ``Schedule(cron="*/5 * * * *" | every=timedelta, action_type=…)``.

    ``name`` identifies the schedule in Redis (default ``"<action_type>@<cron or seconds>"``);
    renaming it starts it afresh. ``data`` becomes the action's data.
    """

    action_type: str
    cron: str | None = None
    every: timedelta | None = None
    data: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    missed: Literal["skip", "fire_once"] = "fire_once"
    grace: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(
                f"schedule for {self.action_type!r}: give exactly one of cron= or every="
            )
        if self.every is not None and self.every < timedelta(milliseconds=1):
            raise ConfigurationError(
                f"schedule for {self.action_type!r}: every={self.every} must be at least 1 ms"
            )
        if self.cron is not None and not _croniter().is_valid(self.cron):
            raise ConfigurationError(
                f"schedule for {self.action_type!r}: {self.cron!r} is not a cron expression "
                "(e.g. '*/5 * * * *')"
            )
        if self.missed not in ("skip", "fire_once"):
            raise ConfigurationError(f"missed={self.missed!r}: use 'skip' or 'fire_once'")
        DomainAction(action_type=self.action_type)  # validates the action type
        if not self.name:
            spec = self.cron or f"{self.every.total_seconds():g}s"  # type: ignore[union-attr]
            object.__setattr__(self, "name", f"{self.action_type}@{spec}")


class TickPlan(NamedTuple):
    """What to do now for one schedule: record ``tick_ms``, and fire it or not."""

    tick_ms: int
    fire: bool


class TickResult(NamedTuple):
    """What ``tick()`` did for one schedule: ``"fired"``, ``"skipped"`` or ``"taken"``."""

    name: str
    tick_ms: int
    outcome: Literal["fired", "skipped", "taken"]


def latest_tick(schedule: Schedule, now: datetime) -> datetime:
    """The schedule's latest tick at or before ``now`` (intervals are aligned to the epoch)."""
    if schedule.every is not None:
        step = schedule.every // timedelta(microseconds=1)
        elapsed = (now - _EPOCH) // timedelta(microseconds=1)
        return _EPOCH + timedelta(microseconds=elapsed - elapsed % step)
    croniter = _croniter()
    now = now.astimezone(UTC)
    previous: datetime = croniter(schedule.cron, now).get_prev(datetime)
    following: datetime = croniter(schedule.cron, previous).get_next(datetime)
    return following if following <= now else previous


def plan_tick(schedule: Schedule, now: datetime, last_ms: int | None) -> TickPlan | None:
    """Decide, from the last recorded tick, whether a tick is due now and if it fires."""
    latest = latest_tick(schedule, now)
    latest_ms = to_epoch_ms(latest)
    if last_ms is None:
        return TickPlan(latest_ms, fire=False)
    if latest_ms <= last_ms:
        return None
    on_time = now - latest <= schedule.grace
    return TickPlan(latest_ms, fire=on_time or schedule.missed == "fire_once")


def tick_action(schedule: Schedule, service: str, tick_ms: int) -> DomainAction:
    """The action a tick fires: same id and content whichever worker builds it."""
    at = _EPOCH + timedelta(milliseconds=tick_ms)
    return DomainAction(
        action_id=uuid.uuid5(_IDS, f"{service}\n{schedule.name}\n{tick_ms}"),
        action_type=schedule.action_type,
        timestamp=at,
        origin_service=service,
        target_service=service,
        data=schedule.data,
        metadata={"actionbus_schedule": schedule.name, "actionbus_tick": at.isoformat()},
    )


def _check_names(schedules: Sequence[Schedule]) -> None:
    names = [s.name for s in schedules]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DelayedActionError(f"schedule names must be unique; repeated: {twice}")


async def fire_tick(
    redis: AnyRedis, queue_manager: QueueManager, service: str, schedule: Schedule,
    plan: TickPlan,
) -> TickResult:
    """Record ``plan``'s tick (and fire it) unless this or a later tick is already recorded."""
    member = (tick_action(schedule, service, plan.tick_ms).model_dump_json(exclude_none=True)
              if plan.fire else "")
    script = redis.register_script(_TICK)
    keys = [queue_manager.get_schedules_key(service), queue_manager.get_delayed_set(service)]
    done = int(await script(keys=keys, args=[schedule.name, plan.tick_ms, member, plan.tick_ms]))
    outcome: Literal["fired", "skipped", "taken"] = (
        "taken" if done == 0 else "fired" if done == 1 else "skipped")
    return TickResult(schedule.name, plan.tick_ms, outcome)


async def tick(
    redis: AnyRedis, queue_manager: QueueManager, service: str,
    schedules: Iterable[Schedule], now: datetime | None = None,
) -> list[TickResult]:
    """Fire every due tick of ``service``'s schedules once, whichever worker calls first.

    Returns what was done for each schedule that had a new tick (nothing for the others).
    """
    schedules = list(schedules)
    if not schedules:
        return []
    _check_names(schedules)
    now = now or datetime.now(UTC)
    key = queue_manager.get_schedules_key(service)
    recorded: list[Any] = await redis.hmget(key, [s.name for s in schedules])
    results: list[TickResult] = []
    for schedule, raw in zip(schedules, recorded, strict=True):
        plan = plan_tick(schedule, now, None if raw is None else int(text(raw)))
        if plan is not None:
            results.append(await fire_tick(redis, queue_manager, service, schedule, plan))
    return results
