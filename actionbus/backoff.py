"""Reconnection backoff with jitter, and logging that stays quiet during an outage."""

from __future__ import annotations

import logging
import random
import time

__all__ = ["Backoff", "OutageLog"]


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))``."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; grows with each call until ``reset()``."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

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
