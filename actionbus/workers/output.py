"""Batched writes of a worker: replies, callbacks, dead letters, then acks.

Handlers finish one by one; each entry's writes (queued just before its ``ack()``) form a
*unit*. A round sends every queued write in one pipeline and reads each command's own
result (``raise_on_error=False``); only then are the acknowledgements of the units whose
writes all landed sent, in a second command. So an entry is never acknowledged before
what it produced is in Redis, whatever the pipeline kind (plain, MULTI/EXEC, cluster).

A write that fails on its own fails alone (``failures.is_transient``):
- transient (connection, timeout, ``LOADING``, ``BUSY``, ``OOM`` …): that unit's failed
  writes and its ack are queued again and retried with backoff; the others go through;
- refused (``WRONGTYPE``, ``NOPERM``, unknown command …): not retried. The entry is
  dead-lettered with reason ``undeliverable`` (its original request kept, plus what was
  refused), counted and logged once in ``Health``, and acknowledged.
If a whole round is refused (a MULTI/EXEC aborted by one command), its units are sent
again one by one, so the bad one is found and fails alone.

``flush()`` sends at once from the calling task (the worker's entry runner, once per batch
of entries finished together); a background task retries failed rounds with backoff and
sweeps up leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from operator import contains
from typing import Any

from actionbus.backoff import Backoff, OutageLog
from actionbus.connection import AnyRedis
from actionbus.dead_letters import dead_letter_fields
from actionbus.workers.context import split_entry_key
from actionbus.workers.failures import describe, is_transient
from actionbus.workers.health import Health

__all__ = ["OutputBatcher"]

logger = logging.getLogger("actionbus.worker")

_SWEEP_SECONDS = 1.0

Command = Callable[[Any], None]
"""Adds exactly one command to a pipeline."""

UNDELIVERABLE = "undeliverable"


@dataclass(slots=True, eq=False)
class _Write:
    what: str  # e.g. "LPUSH actionbus:dev:{a}:responses:x", for logs and dead letters
    command: Command | None = None
    reply: tuple[str, str, int] | None = None  # (queue, payload, ttl)
    dead_letter: bool = False
    reported: bool = False  # its refusal is in the health record (once, whatever retries)


@dataclass(slots=True, eq=False)
class _Unit:
    entry_id: str | None
    writes: list[_Write] = field(default_factory=list)
    refused: list[tuple[_Write, BaseException]] = field(default_factory=list)
    deliveries: int = 0  # of the entry, for its dead letter if Redis refuses an output


def _xadd(stream: str, fields: dict[Any, Any]) -> Command:
    return lambda pipe: pipe.xadd(stream, fields)


def _among(unit: _Unit, units: list[_Unit]) -> bool:
    return any(u is unit for u in units)


class _TransientRound(Exception):
    """Internal: part of a round failed transiently; what failed is queued again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class OutputBatcher:
    """Queues writes and acknowledgements and flushes them in pipelined rounds."""

    def __init__(
        self,
        redis: AnyRedis,
        stream: str,
        group: str,
        outage: OutageLog,
        *,
        before_ack: Callable[[str], None] | None = None,
        health: Health | None = None,
        dead_stream: str | None = None,
        consumer: str = "",
    ) -> None:
        self.redis = redis
        self.before_ack = before_ack
        """Fault-injection seam: called with each entry id just before its ack is queued."""
        self.stream = stream
        self.group = group
        self.health = health or Health(logger, f"output {stream}")
        self.dead_stream = dead_stream
        self.consumer = consumer
        self._outage = outage
        self._units: list[_Unit] = []
        self._acks: list[str] = []  # acks of entries that queued no write (most): no unit
        self._open: list[_Write] = []
        self._sending_acks: set[str] = set()
        self._refused_acks: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flushing = False
        self._replies = 0
        self.acknowledged = 0
        """How many entries this batcher has acknowledged so far."""
        self.undeliverable = 0
        """Entries whose output Redis refused (dead-lettered as ``undeliverable``)."""

    def start(self) -> None:
        """Start the flushing task (supervised by the worker when it runs it)."""
        self._closing = False

    async def run(self) -> None:
        """The background task: retry failed rounds with backoff, sweep up leftovers."""
        await self._run()

    def _pending_writes(self) -> bool:
        return bool(self._units or self._acks or self._open)

    def unacknowledged(self) -> set[str]:
        """Entries whose acknowledgement is queued, being sent, or was refused by Redis."""
        queued = {u.entry_id for u in self._units if u.entry_id is not None}
        return queued.union(self._acks) | self._sending_acks | self._refused_acks

    @property
    def queued(self) -> int:
        """Writes and acknowledgements not yet sent."""
        return len(self._open) + len(self._acks) + sum(
            len(u.writes) + (u.entry_id is not None) for u in self._units)

    def reply(self, queue: str, payload: str, ttl: int) -> None:
        """Push a response onto a caller's list, with a TTL so nothing outlives the caller.

        Replies to one list queued in the same round go in one ``LPUSH`` and one ``EXPIRE``.
        """
        self._open.append(_Write(f"LPUSH {queue}", reply=(queue, payload, ttl)))
        self._replies += 1

    def xadd(self, stream: str, fields: dict[Any, Any]) -> None:
        """Append an entry (a callback or a dead letter) to a stream."""
        self._open.append(_Write(
            f"XADD {stream}", command=_xadd(stream, fields),
            dead_letter=stream == self.dead_stream,
        ))

    def ack(self, entry_id: str, deliveries: int = 0) -> None:
        """Acknowledge an entry once the writes queued for it (since the last ack) landed;
        ``deliveries``: its delivery count, for its dead letter if an output is refused."""
        if self.before_ack is not None:
            self.before_ack(entry_id)
        if self._open:
            self._units.append(_Unit(entry_id, self._open, deliveries=deliveries))
            self._open = []
        else:
            self._acks.append(entry_id)

    async def flush(self) -> None:
        """Send what is queued now, unless a round is already under way (it will)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            sent = False
            while self._pending_writes():
                await self._flush_once()
                sent = True
            if sent:  # Redis took a round: an output outage (if any) is over
                self._outage.success()
        except Exception as exc:  # the background task retries with backoff
            self._outage.failure(getattr(exc, "cause", exc))
            self._wakeup.set()
        finally:
            self._flushing = False

    def callers_waiting(self) -> bool:
        """Replies to waiting callers are queued and no round is under way (a round under
        way sends them right after its own)."""
        return self._replies > 0 and not self._flushing

    def _take(self) -> tuple[list[_Unit], list[str]]:
        self._replies = 0
        units, self._units = self._units, []
        acks, self._acks = self._acks, []
        if self._open:
            units.append(_Unit(None, self._open))
            self._open = []
        return units, acks

    def _requeue(self, units: list[_Unit], acks: list[str] | None = None) -> None:
        """Put back what was not confirmed, ahead of anything queued meanwhile."""
        self._units[:0] = units
        if acks:
            self._acks[:0] = acks

    async def _flush_once(self) -> None:
        units, acks = self._take()
        if not units and not acks:
            return
        self._sending_acks = {u.entry_id for u in units if u.entry_id is not None}.union(acks)
        try:
            await self._send(units, acks)
        finally:
            self._sending_acks = set()

    async def _send(self, units: list[_Unit], acks: list[str]) -> None:
        """One round: the units' writes, then the acks of the units whose writes landed
        and the plain ``acks``."""
        retry: list[_Unit] = []
        transient: BaseException | None = None
        try:
            with_writes = [u for u in units if u.writes]
            if with_writes:
                transient = await self._write(with_writes, retry)
                for unit in with_writes:
                    if not _among(unit, retry):
                        unit.writes = []  # landed: never sent again, even if a later step fails
            # Also units put back by a round that failed while dead-lettering: their refused
            # writes have landed (as refusals) and still wait for their dead letter.
            refused = [u for u in units if u.refused and not _among(u, retry)]
            if refused:
                await self._undeliverable(refused, retry)
            done = [u for u in units if not _among(u, retry)] if retry else units
            transient = await self._ack(done, retry, acks) or transient
        except BaseException:
            self._requeue(units, acks)
            raise
        if retry:
            self._requeue(retry)
        if transient is not None:
            raise _TransientRound(transient)

    async def _write(self, units: list[_Unit], retry: list[_Unit]) -> BaseException | None:
        """Send the units' writes; a unit with a transient failure goes to ``retry``
        with only the writes that failed; refused writes go to ``unit.refused``."""
        pipe = self.redis.pipeline(transaction=False)
        slots: list[tuple[list[_Write], bool]] = []  # per command: its writes, is it primary
        replies: dict[str, list[_Write]] = {}
        for unit in units:
            for write in unit.writes:
                if write.reply is not None:
                    replies.setdefault(write.reply[0], []).append(write)
                else:
                    assert write.command is not None
                    write.command(pipe)
                    slots.append(([write], True))
        for queue, carried in replies.items():
            pipe.lpush(queue, *(w.reply[1] for w in carried if w.reply))
            pipe.expire(queue, max(w.reply[2] for w in carried if w.reply))
            slots += [(carried, True), (carried, False)]
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            if is_transient(exc):
                retry.extend(units)
                return exc
            if len(units) == 1 and len(units[0].writes) == 1:
                units[0].refused.append((units[0].writes[0], exc))
                return None
            # The whole round was refused (e.g. a MULTI/EXEC aborted): find the bad one.
            return await self._one_by_one(units, retry)
        outcome: dict[int, BaseException] = {}
        for (carried, primary), result in zip(slots, results, strict=True):
            if not isinstance(result, Exception):
                continue
            if not primary:  # the EXPIRE of a reply list that was pushed
                if not is_transient(result):
                    self.health.refused(f"EXPIRE {carried[0].what.split(' ', 1)[1]}", result)
                continue
            for write in carried:
                outcome[id(write)] = result
        transient: BaseException | None = None
        for unit in units:
            again: list[_Write] = []
            for write in unit.writes:
                error = outcome.get(id(write))
                if error is None:
                    continue
                if is_transient(error):
                    again.append(write)
                    transient = error
                else:
                    unit.refused.append((write, error))
            if again:
                unit.writes = again
                retry.append(unit)
        return transient

    async def _one_by_one(self, units: list[_Unit], retry: list[_Unit]) -> BaseException | None:
        transient: BaseException | None = None
        for unit in units:
            again: list[_Write] = []
            for write in unit.writes:
                single = _Unit(unit.entry_id, [write])
                exc = await self._write([single], [])
                if exc is not None:
                    again.append(write)
                    transient = exc
                unit.refused.extend(single.refused)
            if again:
                unit.writes = again
                retry.append(unit)
        return transient

    async def _undeliverable(self, units: list[_Unit], retry: list[_Unit]) -> None:
        """Dead-letter entries whose output Redis refused, keeping the original request."""
        for unit in units:
            for write, exc in unit.refused:
                if not write.reported:
                    write.reported = True
                    self.health.refused(write.what, exc)
            refused = [(w, e) for w, e in unit.refused if not w.dead_letter]
            if unit.entry_id is None or self.dead_stream is None or not refused:
                if any(w.dead_letter for w, _ in unit.refused):
                    logger.error("the dead letter for %s was refused by Redis; dropped",
                                 unit.entry_id)
                unit.refused = []
                continue
            stream, entry_id = split_entry_key(unit.entry_id, self.stream)
            fields = await self._original(stream, entry_id)  # {}: gone, or XCLAIM refused
            data = next((fields[k] for k in (b"data", "data") if k in fields), None)
            message = "; ".join(f"{w.what}: {describe(e)}" for w, e in refused)
            letter = dead_letter_fields(  # the request whole: data_missing if it had none
                data=data, reason=UNDELIVERABLE, error_type=type(refused[0][1]).__name__,
                error_message=message, deliveries=unit.deliveries, original_id=entry_id,
                stream=stream, consumer=self.consumer, entry=fields,
            )
            for w, _ in refused:
                if w.reply is not None:
                    letter.setdefault("undelivered", w.reply[1])
            logger.error("dead-lettered %s as %s: %s", unit.entry_id, UNDELIVERABLE,
                         message[:300])
            unit.writes = [_Write(f"XADD {self.dead_stream}", dead_letter=True,
                                  command=_xadd(self.dead_stream, letter))]
            unit.refused = []
            self.undeliverable += 1
            retry.append(unit)  # the dead letter goes out before the ack

    async def _original(self, stream: str, entry_id: str) -> dict[Any, Any]:
        """The fields of our pending entry ``entry_id`` (``XCLAIM`` is in the worker's ACL,
        ``XRANGE`` may not be); empty if Redis refuses or the entry is gone."""
        try:
            claimed: Any = await self.redis.xclaim(stream, self.group, self.consumer or
                                                   "actionbus", 0, [entry_id])
        except Exception as exc:
            if is_transient(exc):
                raise
            self.health.refused(f"XCLAIM {stream}", exc)
            return {}
        return next((dict(f) for _, f in claimed if f is not None), {})

    async def _ack(
        self, units: list[_Unit], retry: list[_Unit], acks: list[str]
    ) -> BaseException | None:
        ids = [u.entry_id for u in units if u.entry_id is not None]
        ids += acks
        if not ids:
            return None
        # ids sent as bytes: str.encode() here is cheaper than redis-py's encoder per id
        by_stream: dict[str, list[bytes]] = {}
        if not any(map(contains, ids, repeat(" "))):  # the usual case: all of this stream
            by_stream[self.stream] = list(map(str.encode, ids))
        else:
            main = []
            for key in ids:  # lane entries are named "<stream> <id>" (context.entry_key)
                if " " in key:
                    stream, entry_id = split_entry_key(key, self.stream)
                    by_stream.setdefault(stream, []).append(entry_id.encode())
                else:
                    main.append(key.encode())
            if main:
                by_stream.setdefault(self.stream, []).extend(main)
        try:
            if len(by_stream) == 1:
                stream, stream_ids = next(iter(by_stream.items()))
                await self.redis.xack(stream, self.group, *stream_ids)
            else:  # the lanes share the service's hash slot: one pipeline
                pipe = self.redis.pipeline(transaction=False)
                for stream, stream_ids in by_stream.items():
                    pipe.xack(stream, self.group, *stream_ids)
                await pipe.execute()
        except Exception as exc:
            if is_transient(exc):
                retry.extend(_Unit(entry_id) for entry_id in ids)
                return exc
            self.health.refused(f"XACK {', '.join(by_stream)}", exc)
            self._refused_acks.update(ids)  # never re-taken by this consumer's recovery
            if len(self._refused_acks) > 100_000:
                self._refused_acks.clear()
            return None
        self.acknowledged += len(ids)
        return None

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SWEEP_SECONDS):  # no task per round (wait_for)
                    await self._wakeup.wait()
            self._wakeup.clear()
            if self._flushing:
                continue
            self._flushing = True
            try:
                sent = False
                while self._pending_writes():
                    await self._flush_once()
                    sent = True
                if sent:  # only a real round trip says Redis is back
                    self._outage.success()
                    backoff.reset()
            except _TransientRound as exc:
                self._outage.failure(exc.cause)
                self._wakeup.set()
                await asyncio.sleep(backoff.next_delay())
            except Exception as exc:
                if not is_transient(exc):
                    raise  # a bug of ours: the supervisor logs it and restarts the loop
                self._outage.failure(exc)
                self._wakeup.set()
                await asyncio.sleep(backoff.next_delay())
            finally:
                self._flushing = False
            if self._closing and not self.queued:
                return

    async def close(self, timeout: float) -> None:
        """Flush what is queued (for at most ``timeout`` seconds)."""
        self._closing = True
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                while self._pending_writes():
                    if self._flushing:
                        await asyncio.sleep(0.01)
                        continue
                    await self.flush()
                    if self._pending_writes():
                        await asyncio.sleep(0.05)
        except TimeoutError:
            logger.warning(
                "stopped with %d writes/acks unsent (Redis unavailable); their actions stay "
                "pending and will be delivered again", self.queued,
            )
        except Exception as exc:  # stop() never raises a client error
            logger.warning("stopped with %d writes/acks unsent (%s: %s)", self.queued,
                           type(exc).__name__, exc)
