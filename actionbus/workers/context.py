"""``WorkerContext``: the frozen facts about one worker that its parts share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from actionbus.clients.queue_manager import QueueManager
from actionbus.workers.routing import Route
from actionbus.workers.settings import WorkerSettings

__all__ = ["Dispatch", "WorkerContext", "entry_key", "split_entry_key"]

Dispatch = Callable[[str], Route]
"""Maps an action type to its route (a fallback route for unregistered types)."""


def entry_key(main_stream: str, stream: str, entry_id: str) -> str:
    """How a worker names an entry it handles: its id for the main stream; for a lane
    stream ``"<stream> <id>"`` (ids of two streams may be equal)."""
    return entry_id if stream == main_stream else f"{stream} {entry_id}"


def split_entry_key(key: str, main_stream: str) -> tuple[str, str]:
    """``(stream, entry id)`` of an ``entry_key``."""
    stream, _, entry_id = key.rpartition(" ")
    return (stream or main_stream), entry_id


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Who the worker is, what it reads and where its outputs go.

    Built once at ``start()``; the processor, the reader and the pipeline's layers get
    this instead of the worker itself.
    """

    service: str
    stream: str
    group: str
    consumer: str
    settings: WorkerSettings
    queues: QueueManager
    dead_stream: str
    reply_ttl: int
    max_payload_bytes: int = 1_048_576
    """Entries whose ``data`` is larger are dead-lettered as ``oversize`` before decoding."""

    lanes: tuple[str, ...] = ()
    """The streams read, most urgent first, when the worker reads priority lanes."""

    def split(self, key: str) -> tuple[str, str]:
        """``(stream, entry id)`` of an entry key (see ``entry_key``)."""
        return split_entry_key(key, self.stream)

    def idempotency_key(self, action_id: str) -> str:
        """The marker key recording that ``action_id`` was handled by this service."""
        return self.queues.get_idempotency_key(self.service, action_id)
