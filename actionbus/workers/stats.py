"""``WorkerStats``: counters of what a worker did since it started."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["WorkerStats"]


@dataclass
class WorkerStats:
    """Counters of what a worker did since it started."""

    handled: int = 0
    failed_attempts: int = 0
    error_replies: int = 0
    dead_lettered: int = 0
    expired_skipped: int = 0
    duplicates_skipped: int = 0
    reclaimed: int = 0
    bad_input: int = 0
    """Entries refused as input (malformed, oversize, unknown type, invalid data…)."""
    large_entries_seen: int = 0
    """Entries so large that a full read of them would exceed ``read_budget_bytes``."""
    dead_letters_trimmed: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))
