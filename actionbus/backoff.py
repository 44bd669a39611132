"""The one backoff of the package, and logging that stays quiet during an outage.

Every retry loop uses ``Backoff``: the worker's read loop and output batcher, the reply
listener, redis-py's connection ``Retry`` (``Backoff`` is a redis-py ``AbstractBackoff``)
and, without jitter, the delay between a failed action's attempts. ``cancel_and_wait``
ends such loops for good.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

from redis.backoff import AbstractBackoff

__all__ = ["Backoff", "OutageLog", "cancel_and_wait", "exponential"]


def exponential(base: float, cap: float, attempt: int) -> float:
    """``min(cap, base * 2**attempt)``: the ceiling of the delay after ``attempt`` failures."""
    return float(min(cap, base * (2 ** min(max(attempt, 0), 30))))


class Backoff(AbstractBackoff):
    """Exponential backoff with *equal* jitter: ``uniform(c / 2, c)``, ``c = exponential(...)``.

    Half the ceiling is guaranteed, so a retry never fires immediately; the other half is
    random, so many clients do not retry in lockstep. ``jitter=False`` returns ``c`` itself.
    Stateful use: ``next_delay()`` / ``reset()``; stateless use: ``compute(failures)``.
    """

    def __init__(self, base: float = 0.05, cap: float = 5.0, *, jitter: bool = True) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.attempts = 0

    def compute(self, failures: int) -> float:
        """The delay after ``failures`` failed attempts (redis-py's ``AbstractBackoff`` API)."""
        ceiling = exponential(self.base, self.cap, failures)
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling

    def next_delay(self) -> float:
        """The delay before the next attempt; grows with each call until ``reset()``."""
        delay = self.compute(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Start again from the smallest delay."""
        self.attempts = 0


class OutageLog:
    """Logs an outage once when it starts, then at most once per ``every`` seconds, then once
    when it ends — a minute of Redis being down yields a handful of lines, not thousands."""

    def __init__(self, logger: logging.Logger, what: str, every: float = 30.0) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        self.failures = 0
        self._since: float | None = None
        self._last_log = 0.0

    @property
    def in_outage(self) -> bool:
        """True between the first failure and the next success."""
        return self._since is not None

    def failure(self, exc: BaseException) -> None:
        """Record a failed attempt; log only if this starts an outage or a period passed."""
        now = time.monotonic()
        self.failures += 1
        if self._since is None:
            self._since = self._last_log = now
            self.logger.warning(
                "%s: Redis unavailable (%s: %s); retrying with backoff",
                self.what, type(exc).__name__, exc,
            )
        elif now - self._last_log >= self.every:
            self._last_log = now
            self.logger.warning(
                "%s: Redis still unavailable after %.0fs (%d attempts; last: %s)",
                self.what, now - self._since, self.failures, type(exc).__name__,
            )

    def success(self) -> None:
        """Record a success; log the recovery if an outage was going on."""
        if self._since is not None:
            self.logger.warning(
                "%s: Redis available again after %.1fs (%d failed attempts)",
                self.what, time.monotonic() - self._since, self.failures,
            )
        self._since = None
        self.failures = 0


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, again_after: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again one that runs on.

    Code under a loop can swallow a cancellation (redis-py's per-write ``asyncio.wait_for``
    on Python 3.11 returns normally when it arrives just as the write ends); the loop then
    goes on and a plain ``gather`` would wait for it forever. Outcomes are retrieved, not
    raised.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
