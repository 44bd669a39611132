"""``actionbus status [SERVICE] [--watch] [--json]``: every service of a namespace at a glance."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from actionbus.cli.app import console, emit_json, main, queues, settings
from actionbus.cli.basic import unknown_service
from actionbus.clients.redis_manager import RedisManager
from actionbus.inspect import inspect_service
from actionbus.status import (
    ServiceStatus,
    discover_services,
    format_tick,
    pending_entries,
    schedule_states,
    service_status,
)
from actionbus.status import format_age as age

__all__ = ["age", "status"]


def _overview(rows: list[ServiceStatus], where: str) -> Table:
    table = Table(title=f"actionbus services in {where}", title_justify="left")
    for column in ("service", "waiting", "pending", "oldest pending", "dead letters", "delayed",
                   "consumers alive/gone", "handled/s (1m)", "last error"):
        table.add_column(column, justify="left" if column in ("service", "last error")
                         else "right", overflow="fold")
    for r in rows:
        table.add_row(r.service, str(r.waiting), str(r.pending), age(r.oldest_pending_age_ms),
                      str(r.dead_letters), str(r.delayed),
                      f"{r.consumers_alive}/{r.consumers_gone}", f"{r.handled_per_s:.2f}",
                      r.last_error or "-")
    return table


def _lanes(rows: list[ServiceStatus]) -> Table | None:
    """One row per lane of each service that uses lanes (``None`` if none does)."""
    if not any(r.lanes for r in rows):
        return None
    table = Table(title="priority lanes", title_justify="left")
    for column in ("service", "lane", "length", "waiting", "pending", "oldest pending",
                   "oldest waiting", "delayed"):
        table.add_column(column, justify="left" if column in ("service", "lane") else "right")
    for r in rows:
        for lane in r.lanes:
            table.add_row(r.service, lane.lane, str(lane.length), str(lane.waiting),
                          str(lane.pending), age(lane.oldest_pending_age_ms),
                          age(lane.oldest_waiting_age_ms), str(lane.delayed))
    return table


async def _collect(manager: RedisManager, service: str | None) -> dict[str, Any]:
    redis, qm = manager.get_client(), queues(manager)
    known = await discover_services(redis, qm)
    s = manager.settings
    where = f"{s.key_prefix}:{s.environment}"
    if service is None:
        if not known:
            raise click.ClickException(
                f"no services found in {where}. Check --url, --environment and --prefix."
            )
        return {"where": where, "services": [
            (await service_status(redis, qm, name)).model_dump(mode="json") for name in known
        ]}
    if service not in known:
        raise unknown_service(service, manager, known)
    info = await inspect_service(redis, qm, service)
    row = await service_status(redis, qm, service, info)
    consumers = [
        {"group": group, "name": c.name, "alive": c.alive, "pending": c.pending,
         "idle_ms": c.idle_ms}
        for group, c in info.consumers()  # one row per consumer, over every lane
    ]
    pending = [e.model_dump(mode="json") for e in await pending_entries(redis, qm, service, 10)]
    schedules = [state.model_dump(mode="json")
                 for state in await schedule_states(redis, qm, service)]
    return {"where": where, "services": [row.model_dump(mode="json")], "consumers": consumers,
            "oldest_pending": pending, "schedules": schedules}


def _render(report: dict[str, Any]) -> RenderableType:
    rows = [ServiceStatus.model_validate(r) for r in report["services"]]
    parts: list[RenderableType] = [_overview(rows, report["where"])]
    lanes = _lanes(rows)
    if lanes is not None:
        parts.append(lanes)
    if "consumers" in report:
        consumers = Table(title="consumers", title_justify="left")
        for column in ("group", "consumer", "state", "pending", "idle"):
            consumers.add_column(column)
        for c in report["consumers"]:
            state = {True: "alive", False: "gone", None: "unknown"}[c["alive"]]
            consumers.add_row(c["group"], c["name"], state, str(c["pending"]), age(c["idle_ms"]))
        entries = Table(title="oldest pending entries", title_justify="left")
        with_lanes = lanes is not None
        for column in ("entry id", *(("lane",) if with_lanes else ()), "action type",
                       "action id", "consumer", "deliveries", "idle"):
            entries.add_column(column)
        for e in report["oldest_pending"]:
            entries.add_row(e["entry_id"], *((e["lane"],) if with_lanes else ()),
                            e["action_type"], e["action_id"], e["consumer"],
                            str(e["deliveries"]), age(e["idle_ms"]))
        parts += [consumers, entries]
        if report.get("schedules"):
            schedules = Table(title="schedules", title_justify="left")
            schedules.add_column("schedule")
            schedules.add_column("last tick (UTC)")
            for sch in report["schedules"]:
                schedules.add_row(sch["name"], format_tick(sch["last_tick_ms"]))
            parts.append(schedules)
    return Group(*parts)


@main.command()
@click.argument("service", required=False)
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def status(
    ctx: click.Context, service: str | None, watch: bool, interval: float, as_json: bool
) -> None:
    """Waiting, pending, dead letters, delayed, consumers and throughput of every service,
    and each lane of the services that use priority lanes (with SERVICE: also its consumers
    and oldest pending entries)."""

    async def once() -> dict[str, Any]:
        async with RedisManager(settings(ctx)) as manager:
            return await _collect(manager, service)

    async def watching() -> None:
        async with RedisManager(settings(ctx)) as manager:
            report = await _collect(manager, service)
            with Live(_render(report), console=console(), auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    live.update(_render(await _collect(manager, service)), refresh=True)

    if watch:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(watching())
        return
    report = asyncio.run(once())
    if as_json:
        emit_json(report)
    else:
        console().print(_render(report))
