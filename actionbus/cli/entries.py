"""``actionbus pending list|retry|dead-letter`` and ``actionbus dead-letters
list|show|replay|delete|purge``: act on stuck entries and dead letters."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from actionbus.cli.app import console, emit_json, main, queues, run
from actionbus.cli.status import age
from actionbus.clients.queue_manager import LANES
from actionbus.clients.redis_manager import RedisManager
from actionbus.dead_letters import DeadLetter, DeadLetterQueue
from actionbus.exceptions import DeadLetterError
from actionbus.inspect import uses_lanes
from actionbus.status import (
    PendingEntry,
    dead_letter_pending,
    pending_entries,
    retry_pending,
)
from actionbus.streams import text

__all__ = ["dead_letters", "pending"]

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_age(value: str | None) -> float | None:
    if value is None:
        return None
    match = _AGE.fullmatch(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not an age: use e.g. 30s, 5m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _action_fields(data: str) -> tuple[str, str]:
    try:
        action = json.loads(data)
        return str(action.get("action_type", "?")), str(action.get("action_id", "?"))
    except (ValueError, AttributeError):
        return "(malformed)", "?"


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter with its ``data`` decoded (one JSON document, never a string of JSON)."""
    out = letter.model_dump(mode="json")
    with contextlib.suppress(ValueError):  # malformed input stays as the original text
        out["data"] = json.loads(letter.data)
    return out


# --- pending ---------------------------------------------------------------------------


_LANE = click.option(
    "--lane", type=click.Choice(LANES), default="normal", show_default=True,
    help="The priority lane the entries are in (normal: the main stream).")


@main.group()
def pending() -> None:
    """Entries delivered to a consumer and not yet acknowledged."""


@pending.command("list")
@click.argument("service")
@click.option("--count", default=50, show_default=True, help="How many per group, oldest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def pending_list(ctx: click.Context, service: str, count: int, as_json: bool) -> None:
    """List pending entries: action type and id, consumer, deliveries, idle time (and lane,
    for a service that uses priority lanes)."""

    async def work(manager: RedisManager) -> tuple[list[PendingEntry], bool]:
        redis, qm = manager.get_client(), queues(manager)
        return (await pending_entries(redis, qm, service, count),
                await uses_lanes(redis, qm, service))

    entries, lanes = run(ctx, work)
    if as_json:
        emit_json([e.model_dump(mode="json") for e in entries])
        return
    table = Table(title=f"{len(entries)} pending entr{'y' if len(entries) == 1 else 'ies'} "
                  f"of {service}", title_justify="left")
    for column in ("entry id", *(("lane",) if lanes else ()), "action type", "action id",
                   "consumer", "deliveries", "idle"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.entry_id, *((e.lane,) if lanes else ()), e.action_type, e.action_id,
                      e.consumer, str(e.deliveries), age(e.idle_ms))
    console().print(table)


@pending.command("retry")
@click.argument("service")
@click.argument("entry_ids", nargs=-1, required=True)
@click.option("--group", default=None, help="Consumer group (default: the service's).")
@_LANE
@click.pass_context
def pending_retry(ctx: click.Context, service: str, entry_ids: tuple[str, ...],
                  group: str | None, lane: str) -> None:
    """Re-queue stuck entries at the end of their stream (the stuck copy is acknowledged)."""

    async def work(manager: RedisManager) -> list[str]:
        redis, qm = manager.get_client(), queues(manager)
        return [f"{i} -> {await retry_pending(redis, qm, service, i, group, lane)}"
                for i in entry_ids]

    for line in run(ctx, work):
        click.echo(f"retried {line}")


@pending.command("dead-letter")
@click.argument("service")
@click.argument("entry_ids", nargs=-1, required=True)
@click.option("--group", default=None, help="Consumer group (default: the service's).")
@click.option("--reason", default="operator", show_default=True, help="Why, as recorded.")
@_LANE
@click.pass_context
def pending_dead_letter(ctx: click.Context, service: str, entry_ids: tuple[str, ...],
                        group: str | None, reason: str, lane: str) -> None:
    """Move stuck entries to the dead-letter stream (kept whole, with the reason)."""

    async def work(manager: RedisManager) -> int:
        redis, qm = manager.get_client(), queues(manager)
        for entry_id in entry_ids:
            await dead_letter_pending(redis, qm, service, entry_id, reason, group, lane)
        return len(entry_ids)

    click.echo(f"dead-lettered {run(ctx, work)} entr(ies) of {service}")


# --- dead letters ----------------------------------------------------------------------


@main.group("dead-letters")
def dead_letters() -> None:
    """List, show, replay, delete and purge a service's dead letters."""


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--reason", default=None, help="Only this reason (e.g. rejected).")(f)
    f = click.option("--action-type", default=None, help="Only this action type.")(f)
    f = click.option("--older-than", default=None, help="Only older than this (30s, 5m, 2h).")(f)
    f = click.option("--newer-than", default=None, help="Only newer than this (30s, 5m, 2h).")(f)
    return f


class _Match:
    def __init__(self, reason: str | None, action_type: str | None, older_than: str | None,
                 newer_than: str | None) -> None:
        self.reason, self.action_type = reason, action_type
        self.older, self.newer = _parse_age(older_than), _parse_age(newer_than)

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.reason, self.action_type, self.older, self.newer))

    def __call__(self, letter: DeadLetter) -> bool:
        age_s = time.time() - int(letter.entry_id.partition("-")[0]) / 1000
        return (
            (self.reason is None or letter.reason == self.reason)
            and (self.action_type is None or _action_fields(letter.data)[0] == self.action_type)
            and (self.older is None or age_s >= self.older)
            and (self.newer is None or age_s <= self.newer)
        )


async def _scan(queue: DeadLetterQueue, match: _Match, newest_first: bool = False,
                limit: int | None = None) -> AsyncIterator[DeadLetter]:
    found, cursor = 0, "+" if newest_first else "-"
    while True:
        if newest_first:
            raw: Any = await queue.redis.xrevrange(queue.stream, max=cursor, min="-", count=200)
        else:
            raw = await queue.redis.xrange(queue.stream, min=cursor, max="+", count=200)
        if not raw:
            return
        for entry_id, _ in raw:
            letter = await queue.get(text(entry_id))
            if match(letter):
                yield letter
                found += 1
                if limit is not None and found >= limit:
                    return
        cursor = "(" + text(raw[-1][0])


@dead_letters.command("list")
@click.argument("service")
@click.option("--count", default=20, show_default=True, help="How many at most.")
@click.option("--newest-first", is_flag=True, help="Newest first (default: oldest first).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_filters
@click.pass_context
def list_dead(ctx: click.Context, /, service: str, count: int, newest_first: bool, as_json: bool,
              **filters: str | None) -> None:
    """List dead letters: when, reason, action type and id, deliveries, error."""
    match = _Match(**filters)

    async def work(manager: RedisManager) -> list[DeadLetter]:
        queue = DeadLetterQueue(manager.get_client(), queues(manager), service)
        return [x async for x in _scan(queue, match, newest_first, count)]

    letters = run(ctx, work)
    if as_json:
        emit_json([_letter_json(letter) for letter in letters])
        return
    table = Table(title=f"{len(letters)} dead letter(s) of {service}", title_justify="left")
    for column in ("entry id", "failed at", "reason", "action type", "action id", "deliveries",
                   "error"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        action_type, action_id = _action_fields(letter.data)
        table.add_row(letter.entry_id, letter.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
                      letter.reason, action_type, action_id, str(letter.deliveries),
                      f"{letter.error_type}: {letter.error_message}"[:120])
    console().print(table)


@dead_letters.command("show")
@click.argument("service")
@click.argument("entry_id")
@click.pass_context
def show_dead(ctx: click.Context, service: str, entry_id: str) -> None:
    """Print one dead letter in full (its action decoded) as JSON."""

    async def work(manager: RedisManager) -> DeadLetter:
        return await DeadLetterQueue(manager.get_client(), queues(manager), service).get(entry_id)

    emit_json(_letter_json(run(ctx, work)))


def _bulk(ctx: click.Context, service: str, entry_ids: tuple[str, ...], every: bool,
          match: _Match, verb: str, dry_run: bool, yes: bool, destructive: bool) -> None:
    if not entry_ids and not every and not match.any:
        raise click.UsageError(f"name entry ids to {verb}, pass --all, or give a filter")

    async def select(manager: RedisManager) -> list[DeadLetter]:
        queue = DeadLetterQueue(manager.get_client(), queues(manager), service)
        if entry_ids:
            return [letter for i in entry_ids if match(letter := await queue.get(i))]
        return [x async for x in _scan(queue, match)]

    chosen = run(ctx, select)
    past = {"replay": "replayed", "delete": "deleted"}[verb]
    if dry_run:
        for letter in chosen:
            action_type, action_id = _action_fields(letter.data)
            click.echo(f"would {verb} {letter.entry_id} {action_type} {action_id} "
                       f"({letter.reason})")
        click.echo(f"dry run: {len(chosen)} dead letter(s) of {service} would be {past}")
        return
    if not chosen:
        click.echo(f"no dead letters of {service} match; nothing {past}")
        return
    if destructive and not yes:
        click.confirm(f"{verb} {len(chosen)} dead letter(s) of {service} for good?", abort=True)

    skipped: list[tuple[str, str]] = []  # letters that could not be replayed, and why
    gone: list[str] = []  # letters deleted or replayed by someone else since the selection

    async def act(manager: RedisManager) -> int:
        queue = DeadLetterQueue(manager.get_client(), queues(manager), service)
        done = 0
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"{verb}ing", total=len(chosen))
            for letter in chosen:
                if verb == "delete":
                    if await queue.delete(letter.entry_id):
                        done += 1
                    else:  # gone already, as asked: said, not an error
                        gone.append(letter.entry_id)
                else:  # one letter that cannot be replayed does not stop the others
                    try:
                        await queue.replay(letter.entry_id)
                        done += 1
                    except DeadLetterError as exc:
                        skipped.append((letter.entry_id, str(exc)))
                progress.advance(task)
        return done

    done = run(ctx, act)
    where = f" into {service}'s stream" if verb == "replay" else ""
    click.echo(f"{past} {done} dead letter(s){where}")
    for entry_id in gone:
        click.echo(f"already gone: {entry_id} (deleted or replayed meanwhile)", err=True)
    for entry_id, why in skipped:
        click.echo(f"not {past}: {entry_id}: {why}", err=True)
    if skipped:
        ctx.exit(1)


@dead_letters.command("replay")
@click.argument("service")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every dead letter (that the filters match).")
@click.option("--dry-run", is_flag=True, help="Only list what would be replayed.")
@_filters
@click.pass_context
def replay(ctx: click.Context, /, service: str, entry_ids: tuple[str, ...], every: bool,
           dry_run: bool, **filters: str | None) -> None:
    """Move dead letters back to the service's action stream (filter out poison first)."""
    _bulk(ctx, service, entry_ids, every, _Match(**filters), "replay", dry_run, True, False)


@dead_letters.command("delete")
@click.argument("service")
@click.argument("entry_ids", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.pass_context
def delete(ctx: click.Context, service: str, entry_ids: tuple[str, ...], yes: bool,
           dry_run: bool) -> None:
    """Delete the named dead letters for good (asks first unless --yes)."""
    _bulk(ctx, service, entry_ids, False, _Match(None, None, None, None), "delete", dry_run,
          yes, True)


@dead_letters.command("purge")
@click.argument("service")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@_filters
@click.pass_context
def purge(ctx: click.Context, /, service: str, yes: bool, dry_run: bool,
          **filters: str | None) -> None:
    """Delete every dead letter (that the filters match) for good (asks first unless --yes)."""
    _bulk(ctx, service, (), True, _Match(**filters), "delete", dry_run, yes, True)
