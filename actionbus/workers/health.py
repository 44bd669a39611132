"""A worker's health: what Redis refused (not an outage), and whether a loop died.

``Health`` is shared by the worker's parts; ``worker.health`` returns a ``HealthStatus``
snapshot that ``status`` commands and health checks read. A refusal (``NOPERM``,
``WRONGTYPE``, ``WRONGPASS`` …) is logged once per kind of operation and error, counted,
and makes the worker unhealthy: the one operation failed, everything else keeps flowing.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from actionbus.workers.failures import describe

_log = logging.getLogger("actionbus.worker")

__all__ = ["Health", "HealthStatus", "SlowCommands"]


_CODES = {"NoPermissionError": "NOPERM", "OutOfMemoryError": "OOM",
          "AuthenticationError": "WRONGPASS", "ReadOnlyError": "READONLY"}


def _code(exc: BaseException) -> str:
    """The Redis error code (``WRONGTYPE``, ``NOPERM`` …) or the exception's type name."""
    name = type(exc).__name__
    if name in _CODES:
        return _CODES[name]
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() and first.isalpha() else name


class HealthStatus(BaseModel):
    """A snapshot of a worker's health."""

    model_config = ConfigDict(frozen=True)

    healthy: bool = Field(description="False once Redis refused an operation or a loop died.")
    in_outage: bool = Field(False, description="Redis is unreachable right now (retrying).")
    refused: dict[str, int] = Field(
        default_factory=dict, description="Refused operations by 'operation: error', counted."
    )
    problems: list[str] = Field(default_factory=list, description="One line per problem.")
    failed: str | None = Field(None, description="Why the worker stopped for good, if it did.")
    slow_commands: int = Field(0, description="Loop commands that took over a socket timeout.")


class Health:
    """Collects refusals and loop deaths; logs each kind once."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.refusals: dict[str, int] = {}
        self._lines: dict[str, str] = {}
        self.failed: BaseException | None = None
        self.slow_commands = 0

    def refused(self, operation: str, exc: BaseException) -> None:
        """Record that Redis refused ``operation`` (e.g. ``LPUSH <key>``) with ``exc``."""
        key = f"{operation.split(' ', 1)[0]}: {_code(exc)}"
        first = key not in self.refusals
        self.refusals[key] = self.refusals.get(key, 0) + 1
        if first:
            line = f"Redis refused {operation}: {describe(exc)}"
            self._lines[key] = line
            self.logger.error(
                "%s: %s — not an outage, so not retried; the worker is now unhealthy "
                "(fix the ACL / key type; later refusals of this kind are only counted)",
                self.what, line,
            )

    def died(self, exc: BaseException) -> None:
        """Record that a loop died for good (the worker stops)."""
        if self.failed is None:
            self.failed = exc

    def status(self, *, in_outage: bool = False) -> HealthStatus:
        """The current snapshot."""
        problems = list(self._lines.values())
        failed = None
        if self.failed is not None:
            failed = f"{type(self.failed).__name__}: {self.failed}"
            problems.append(f"stopped: {failed}")
        return HealthStatus(
            healthy=not problems, in_outage=in_outage, refused=dict(self.refusals),
            problems=problems, failed=failed, slow_commands=self.slow_commands,
        )


class SlowCommands:
    """Makes an outage hidden inside one command visible: redis-py's retries can turn a
    long partition into one slow call, which no error ever reports.

    ``check(what, seconds)`` logs "Redis slow/unavailable for Ns" and counts it (in
    ``count`` and ``Health.slow_commands``) when a loop's command took longer than
    ``threshold`` (the socket timeout).
    """

    def __init__(self, health: Health | None, threshold: float) -> None:
        self.health = health
        self.threshold = threshold
        self.count = 0
        self.longest = 0.0

    def check(self, what: str, seconds: float) -> None:
        """Record one command's duration (beyond any deliberate block)."""
        if seconds <= self.threshold:
            return
        self.count += 1
        self.longest = max(self.longest, seconds)
        if self.health is not None:
            self.health.slow_commands += 1
        _log.warning("Redis slow/unavailable for %.1fs (%s took longer than the socket "
                       "timeout of %.1fs; redis-py retried inside it)", seconds, what,
                       self.threshold)
