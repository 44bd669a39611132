"""The delayed set of a service: actions that enter its stream at a due time.

Key ``{prefix}:{env}:{<service>}:delayed:main``, a sorted set:

* **member** = the action's JSON, exactly what goes into the stream's ``data`` field;
* **score** = the due time in epoch milliseconds.

So a service in any language sends a delayed action with one command::

    ZADD actionbus:dev:{inventory}:delayed:main 1795320000000 '{"action_id":"…",…}'

The trade-off of "member = the action itself" (rather than member = action id plus a
payload hash): a foreign sender needs one ``ZADD``, and nothing can half-exist; but
``cancel(action_id)`` has to find the member with a server-side ``ZSCAN … MATCH``, which is
O(size of the set) — fine for an operator's cancel, not for a hot path. Adding the very same
JSON twice leaves one entry (the later due time wins). An action without ``action_id``
still fires, but cannot be cancelled.

The set shares its stream's hash slot (the ``{service}`` hash tag), so the Lua scripts
below touch both keys atomically on Redis Cluster too:

* the **mover** moves up to N due entries (``XADD`` field ``data``, then ``ZREM``) in one
  script: an entry is never lost and never moved twice, whichever worker runs it;
* **retry_later** parks a failed attempt in the set and ``XACK``s its stream entry in one
  script: the retry is written before the acknowledgement, never one without the other.

A retried action carries the deliveries it has used in ``metadata["actionbus_deliveries"]``
(see ``with_deliveries``), since its next stream entry starts a fresh delivery counter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from actionbus.clients.queue_manager import QueueManager
from actionbus.connection import AnyRedis
from actionbus.exceptions import DelayedActionError
from actionbus.models.actions import DomainAction
from actionbus.streams import text

__all__ = [
    "DELIVERIES_KEY",
    "FIRST_ENTRY_KEY",
    "DelayedEntry",
    "DelayedQueue",
    "MoveReport",
    "deliveries_of",
    "retry_payload",
    "seconds_until",
    "to_epoch_ms",
    "with_deliveries",
    "without_bookkeeping",
]

DELIVERIES_KEY = "actionbus_deliveries"
FIRST_ENTRY_KEY = "actionbus_first_entry"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# KEYS: delayed set, its stream, [another set, its stream …]. ARGV[1] now in epoch ms ('' =
# the server's clock), ARGV[2] max entries to move from each set. Returns one
# {moved, next due score or '', now, due scores...} per set. Each entry is XADDed before it
# is ZREMed: if XADD fails, the entry stays in the set.
_MOVE_DUE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local all = {}
for k = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'WITHSCORES',
                         'LIMIT', 0, tonumber(ARGV[2]))
  local out = {0, '', now}
  for i = 1, #due, 2 do
    redis.call('XADD', KEYS[k + 1], '*', 'data', due[i])
    redis.call('ZREM', KEYS[k], due[i])
    out[#out + 1] = due[i + 1]
  end
  out[1] = #due / 2
  local nxt = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if nxt[2] then out[2] = nxt[2] end
  all[#all + 1] = out
end
return all
"""

# KEYS[1] delayed set, KEYS[2] stream. ARGV[1] group, ARGV[2] entry id, ARGV[3] due score,
# ARGV[4] payload. Parks the payload and acknowledges the entry only if the entry is still
# pending in the group (else nothing is written: someone else finished it). Returns 1 or 0.
# ZADD comes before XACK, so an error can leave a duplicate, never a loss.
_RETRY_LATER = """
local pending = redis.call('XPENDING', KEYS[2], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
"""


# KEYS[1] delayed set. ARGV[1] delay in ms, ARGV[2] member. Adds the member due at the Redis
# server's clock plus the delay (the clock the mover uses); returns the due time in ms.
_ADD_AFTER = """
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
"""


class DelayedEntry(NamedTuple):
    """One delayed action: its due time and the action JSON (``member``) as stored."""

    due_ms: int
    member: str
    action_id: str | None
    action_type: str | None

    @property
    def due_at(self) -> datetime:
        """The due time as an aware UTC datetime."""
        return _EPOCH + timedelta(milliseconds=self.due_ms)


class MoveReport(NamedTuple):
    """What one mover run did: how many moved, the next due time, and each one's lateness."""

    moved: int
    next_due_ms: int | None
    now_ms: int
    lateness_ms: tuple[int, ...]


def _report(reply: Sequence[Any]) -> MoveReport:
    """The ``MoveReport`` of one set's part of a ``_MOVE_DUE`` reply."""
    now = int(reply[2])
    next_due = text(reply[1])
    return MoveReport(
        moved=int(reply[0]),
        next_due_ms=int(float(next_due)) if next_due else None,
        now_ms=now,
        lateness_ms=tuple(now - int(float(text(s))) for s in reply[3:]),
    )


def to_epoch_ms(when: datetime | int) -> int:
    """Epoch milliseconds of an aware datetime (an int is taken as epoch ms already)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise DelayedActionError(
                f"due time {when.isoformat()} has no timezone: pass an aware datetime "
                "(e.g. datetime.now(UTC) + timedelta(minutes=5))"
            )
        return (when - _EPOCH) // timedelta(milliseconds=1)
    return int(when)


def seconds_until(next_due_ms: int | None, now_ms: int, ceiling_s: float) -> float:
    """How long a mover may sleep: until the next due time, at most ``ceiling_s``, never < 0."""
    if next_due_ms is None:
        return ceiling_s
    return max(0.0, min(ceiling_s, (next_due_ms - now_ms) / 1000))


def _load_object(payload: bytes | str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise DelayedActionError(
            f"payload {payload[:80]!r} is not a JSON object: only actions can be delayed"
        )
    return obj


def with_deliveries(payload: bytes | str, deliveries: int) -> str:
    """The action JSON with ``metadata["actionbus_deliveries"] = deliveries``, all else kept."""
    obj = _load_object(payload)
    metadata = obj.get("metadata")
    obj["metadata"] = {**(metadata if isinstance(metadata, dict) else {}),
                       DELIVERIES_KEY: int(deliveries)}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def retry_payload(payload: bytes | str, deliveries: int, entry_id: str) -> str:
    """``with_deliveries`` plus the stream entry id of the first attempt (kept if set)."""
    obj = json.loads(with_deliveries(payload, deliveries))
    obj["metadata"].setdefault(FIRST_ENTRY_KEY, entry_id)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def without_bookkeeping(payload: bytes | str) -> tuple[str, str | None]:
    """The action JSON without the retry keys (an emptied ``metadata`` dropped), and the
    first attempt's entry id: what a dead letter keeps, so a replay starts afresh."""
    obj = _load_object(payload)
    metadata = obj.get("metadata")
    first = None
    if isinstance(metadata, dict):
        metadata.pop(DELIVERIES_KEY, None)
        found = metadata.pop(FIRST_ENTRY_KEY, None)
        first = found if isinstance(found, str) else None
        if not metadata:
            del obj["metadata"]
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")), first


def deliveries_of(action: DomainAction) -> int:
    """Deliveries an action used before its current stream entry (0 if never retried)."""
    value = action.metadata.get(DELIVERIES_KEY, 0)
    return value if isinstance(value, int) and value > 0 else 0


def _describe(member: bytes | str, score: bytes | str | float) -> DelayedEntry:
    raw = member.decode(errors="replace") if isinstance(member, bytes) else member
    action_id = action_type = None
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        action_id = str(obj["action_id"]) if "action_id" in obj else None
        action_type = str(obj["action_type"]) if "action_type" in obj else None
    return DelayedEntry(int(float(score)), raw, action_id, action_type)


def _case_blind(value: str) -> str:
    """A glob matching ``value`` in any letter case (UUIDs may be upper-cased by others)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in value)


class DelayedQueue:
    """Add, inspect, cancel and move one service's delayed actions."""

    def __init__(
        self, redis: AnyRedis, queue_manager: QueueManager, service: str,
        lane: str | None = None, partition: int = 0,
    ) -> None:
        self.redis = redis
        self.service = service
        self.queue_manager = queue_manager
        self.key = queue_manager.get_delayed_set(service, lane, partition)
        """``lane`` (``high``/``low``): that lane's own set, moved into the lane's stream;
        ``partition`` ``k``: partition ``k``'s set, moved into its stream."""
        self.stream = queue_manager.get_lane_stream(service, lane) if lane not in (
            None, "normal") else queue_manager.get_partition_stream(service, partition)
        self._ordered = queue_manager.get_ordered_stream(service, partition)
        self._move = redis.register_script(_MOVE_DUE)
        self._retry = redis.register_script(_RETRY_LATER)
        self._add_after = redis.register_script(_ADD_AFTER)

    async def add(self, action: DomainAction | str | bytes, due_at: datetime | int) -> str | None:
        """Park ``action`` until ``due_at`` (aware datetime or epoch ms); return its action id.

        A ``DomainAction`` must be for this service. A JSON string is stored as given.
        """
        member, action_id = self._member(action)
        mapping: dict[Any, int] = {member: to_epoch_ms(due_at)}
        await self.redis.zadd(self.key, mapping)
        return action_id

    async def add_after(
        self, action: DomainAction | str | bytes, delay: timedelta | float,
    ) -> tuple[str | None, int]:
        """Park ``action`` for ``delay`` (seconds or timedelta) by the Redis server's clock.

        Returns (its action id, its due time in epoch ms). Immune to this host's clock skew.
        """
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not seconds >= 0:
            raise DelayedActionError(f"delay must be zero or positive, got {delay!r}")
        member, action_id = self._member(action)
        due = await self._add_after(keys=[self.key], args=[round(seconds * 1000), member])
        return action_id, int(due)

    def _member(self, action: DomainAction | str | bytes) -> tuple[bytes | str, str | None]:
        if isinstance(action, DomainAction):
            if action.target != self.service:
                raise DelayedActionError(
                    f"action {action.action_id} ({action.action_type}) is for service "
                    f"{action.target!r}, not {self.service!r}: use that service's DelayedQueue"
                )
            return action.model_dump_json(exclude_none=True), str(action.action_id)
        return action, _describe(action, 0).action_id

    async def count(self) -> int:
        """How many actions wait in the set (due or not)."""
        return int(await self.redis.zcard(self.key))

    async def list(self, limit: int = 100) -> list[DelayedEntry]:
        """Up to ``limit`` delayed actions, soonest first, with their due times."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        rows: Any = await self.redis.zrange(self.key, 0, limit - 1, withscores=True)
        return [_describe(member, score) for member, score in rows]

    async def cancel(self, action_id: str | uuid.UUID) -> bool:
        """Remove the delayed action with ``action_id``; ``False`` if none waits (or it moved).

        Scans the set server-side (O(size)); removal is a ``ZREM`` of the exact member, so an
        action the mover took first is reported as not cancelled, never half-removed.
        """
        try:
            wanted = uuid.UUID(str(action_id))
        except ValueError:
            raise DelayedActionError(
                f"{action_id!r} is not an action id (a UUID, as shown by `actionbus delayed list`)"
            ) from None
        removed = False
        pattern = f"*{_case_blind(str(wanted))}*"
        async for member, _score in self.redis.zscan_iter(self.key, match=pattern, count=500):
            found = _describe(member, 0).action_id
            try:
                same = found is not None and uuid.UUID(found) == wanted
            except ValueError:
                same = False
            if same and await self.redis.zrem(self.key, member):
                removed = True
        return removed

    async def move_due_report(self, max_batch: int = 100, now_ms: int | None = None) -> MoveReport:
        """Move up to ``max_batch`` due actions into the stream, in one script.

        ``now_ms`` defaults to the Redis server's clock, so workers' clocks do not matter.
        """
        return (await self.move_due_with((), max_batch, now_ms))[0]

    async def move_due_with(
        self, others: Sequence[DelayedQueue], max_batch: int = 100, now_ms: int | None = None,
    ) -> tuple[MoveReport, ...]:
        """``move_due_report`` of this set and of ``others`` (sets of the same service, so of
        one hash slot: its lanes' sets) in one script, one round trip; a report per set."""
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        now_arg = "" if now_ms is None else str(int(now_ms))
        keys = [key for queue in (self, *others) for key in (queue.key, queue.stream)]
        replies: Sequence[Any] = await self._move(keys=keys, args=[now_arg, max_batch])
        return tuple(_report(reply) for reply in replies)

    async def move_due(self, max_batch: int = 100) -> tuple[int, int | None]:
        """Move due actions into the stream; return (how many moved, next due epoch ms or None).

        A caller can sleep until the next due time (capped by its own poll interval).
        """
        report = await self.move_due_report(max_batch)
        return report.moved, report.next_due_ms

    async def retry_later(
        self, stream: str, group: str, entry_id: str, payload: bytes | str,
        due_at: datetime | int,
    ) -> bool:
        """Park ``payload`` until ``due_at`` and ``XACK`` ``entry_id`` of ``stream`` (this
        set's stream, or its partition's ordered stream), atomically.

        ``payload`` should carry its deliveries (``with_deliveries``). Returns ``False`` and
        writes nothing when the entry is no longer pending in ``group``.
        """
        if stream != self.stream and stream != self._ordered:  # "skip": ordered -> unordered
            raise DelayedActionError(
                f"retry_later for {stream!r} on the delayed set of {self.service!r}: a retry "
                f"goes back to the same service ({self.stream})"
            )
        acked = await self._retry(keys=[self.key, stream],
                                  args=[group, entry_id, to_epoch_ms(due_at), payload])
        return bool(acked)
