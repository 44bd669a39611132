"""The dashboard's HTML: server-rendered f-strings, every value through ``html.escape``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from actionbus.dead_letters import DeadLetter
from actionbus.inspect import ServiceInfo
from actionbus.status import PendingEntry, ScheduleState, ServiceStatus, format_tick
from actionbus.status import format_age as age

__all__ = [
    "action_fields", "age", "e", "entry_page", "lanes_table", "layout", "overview",
    "overview_table", "service_page", "sparkline",
]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.bad{color:#b00020;font-weight:600}.ok{color:#127a12}
pre{background:#f6f6f6;padding:1rem;overflow:auto}
form.inline{display:inline}button{cursor:pointer}
"""

_REFRESH = """
<script>
setInterval(async () => {
  const r = await fetch('/fragments/overview', {credentials: 'same-origin'});
  if (r.ok) document.getElementById('overview').innerHTML = await r.text();
}, 2000);
</script>
"""


def e(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return escape("" if value is None else str(value), quote=True)


def _u(value: str) -> str:
    return quote(value, safe="")


def _lane_query(lane: str) -> str:
    """The query string naming a lane's entry (none for the main stream)."""
    return "" if lane == "normal" else f"?lane={_u(lane)}"


def layout(title: str, body: str, where: str, read_only: bool) -> str:
    """A whole page."""
    mode = " (read-only)" if read_only else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<p><a href='/'>actionbus</a> · {e(where)}{mode}</p><h1>{e(title)}</h1>{body}"
        "</body></html>"
    )


def sparkline(values: Sequence[float], width: int = 120, height: int = 24) -> str:
    """An inline SVG line of ``values`` (handled/s samples)."""
    if not values:
        return ""
    top = max(max(values), 1e-9)
    step = width / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - v / top * (height - 2) - 1:.1f}"
                      for i, v in enumerate(values))
    return (f"<svg class='spark' width='{width}' height='{height}' role='img' "
            f"aria-label='throughput'><polyline fill='none' stroke='#3366cc' "
            f"stroke-width='1.5' points='{points}'/></svg>")


def overview_table(rows: Iterable[ServiceStatus], history: dict[str, list[float]]) -> str:
    """The status table (the same figures as ``actionbus status``)."""
    head = "".join(f"<th>{h}</th>" for h in (
        "service", "waiting", "pending", "oldest pending", "dead letters", "delayed",
        "consumers alive/gone", "handled/s (1m)", "throughput", "last error"))
    body = []
    for r in rows:
        gone = " class='bad'" if r.consumers_gone else ""
        body.append(
            f"<tr data-service='{e(r.service)}'>"
            f"<td class='l'><a href='/services/{_u(r.service)}'>{e(r.service)}</a></td>"
            f"<td class='waiting'>{r.waiting}</td><td class='pending'>{r.pending}</td>"
            f"<td>{age(r.oldest_pending_age_ms)}</td>"
            f"<td class='dead'>{r.dead_letters}</td><td class='delayed'>{r.delayed}</td>"
            f"<td{gone}>{r.consumers_alive}/{r.consumers_gone}</td>"
            f"<td>{r.handled_per_s:.2f}</td><td>{sparkline(history.get(r.service, []))}</td>"
            f"<td class='l'>{e(r.last_error or '-')}</td></tr>"
        )
    rows = list(rows)
    return f"<table id='services'><tr>{head}</tr>{''.join(body)}</table>{lanes_table(rows)}"


def lanes_table(rows: Iterable[ServiceStatus]) -> str:
    """One row per lane of each service that uses priority lanes ("" if none does)."""
    body = []
    for r in rows:
        for lane in r.lanes:
            body.append(
                f"<tr data-service='{e(r.service)}' data-lane='{e(lane.lane)}'>"
                f"<td class='l'>{e(r.service)}</td><td class='l'>{e(lane.lane)}</td>"
                f"<td class='length'>{lane.length}</td><td class='waiting'>{lane.waiting}</td>"
                f"<td class='pending'>{lane.pending}</td>"
                f"<td class='oldest-pending'>{age(lane.oldest_pending_age_ms)}</td>"
                f"<td class='oldest-waiting'>{age(lane.oldest_waiting_age_ms)}</td>"
                f"<td class='delayed'>{lane.delayed}</td></tr>")
    if not body:
        return ""
    head = "".join(f"<th{' class=l' if h in ('service', 'lane') else ''}>{h}</th>" for h in (
        "service", "lane", "length", "waiting", "pending", "oldest pending", "oldest waiting",
        "delayed"))
    return (f"<h2>Priority lanes</h2><table id='lanes'><tr>{head}</tr>{''.join(body)}"
            "</table>")


def overview(table: str) -> str:
    """The overview page's body, refreshed in place."""
    return f"<div id='overview'>{table}</div>{_REFRESH}"


def _button(action: str, label: str, confirm: str) -> str:
    return (f"<form class='inline' method='post' action='{e(action)}' "
            f"onsubmit=\"return confirm('{e(confirm)}')\"><button>{e(label)}</button></form>")


def action_fields(data: str) -> tuple[str, str]:
    try:
        action = json.loads(data)
        return str(action.get("action_type", "?")), str(action.get("action_id", "?"))
    except (ValueError, AttributeError):
        return "(malformed)", "?"


def service_page(
    row: ServiceStatus, info: ServiceInfo, pending: list[PendingEntry],
    recent: list[tuple[str, str, str]], letters: list[DeadLetter], read_only: bool,
    schedules: Sequence[ScheduleState] = (),
) -> str:
    """Consumers, pending entries, recent actions (``(lane, entry id, data)``), schedules,
    dead letters and their actions; with lanes, each lane's figures and a lane column."""
    svc = _u(row.service)
    lanes = bool(row.lanes)
    lane_head = "<th class='l'>lane</th>" if lanes else ""
    parts = [overview_table([row], {})]
    parts.append("<h2>Consumers</h2><table id='consumers'><tr><th class='l'>group</th>"
                 "<th class='l'>consumer</th><th>state</th><th>pending</th><th>idle</th></tr>")
    for group, c in info.consumers():  # one row per consumer, over every lane
        state = {True: "alive", False: "gone", None: "unknown"}[c.alive]
        parts.append(f"<tr><td class='l'>{e(group)}</td><td class='l'>{e(c.name)}</td>"
                     f"<td class='{'ok' if c.alive else 'bad'}'>{state}</td>"
                     f"<td>{c.pending}</td><td>{age(c.idle_ms)}</td></tr>")
    parts.append("</table><h2>Pending entries</h2><table id='pending'><tr>"
                 f"<th class='l'>entry</th>{lane_head}<th class='l'>action type</th>"
                 "<th class='l'>consumer</th><th>deliveries</th><th>idle</th><th></th></tr>")
    for p in pending:
        where = _lane_query(p.lane)
        act = "" if read_only else _button(
            f"/services/{svc}/pending/{_u(p.entry_id)}/dead-letter{where}", "dead-letter",
            f"Move {p.entry_id} to the dead letters?")
        lane_cell = f"<td class='l lane'>{e(p.lane)}</td>" if lanes else ""
        parts.append(
            f"<tr><td class='l'><a href='/services/{svc}/entries/{_u(p.entry_id)}{where}'>"
            f"{e(p.entry_id)}</a></td>{lane_cell}<td class='l'>{e(p.action_type)}</td>"
            f"<td class='l'>{e(p.consumer)}</td><td>{p.deliveries}</td><td>{age(p.idle_ms)}"
            f"</td><td>{act}</td></tr>")
    parts.append("</table><h2>Recent actions</h2><table id='recent'><tr><th class='l'>entry</th>"
                 f"{lane_head}<th class='l'>action type</th><th class='l'>action id</th></tr>")
    for lane, entry_id, data in recent:
        action_type, action_id = action_fields(data)
        lane_cell = f"<td class='l lane'>{e(lane)}</td>" if lanes else ""
        parts.append(f"<tr><td class='l'><a href='/services/{svc}/entries/{_u(entry_id)}"
                     f"{_lane_query(lane)}'>{e(entry_id)}</a></td>{lane_cell}"
                     f"<td class='l'>{e(action_type)}</td><td class='l'>{e(action_id)}</td></tr>")
    parts.append("</table>")
    if schedules:
        parts.append("<h2>Schedules</h2><table id='schedules'><tr><th class='l'>schedule</th>"
                     "<th class='l'>last tick (UTC)</th></tr>")
        for sch in schedules:
            parts.append(f"<tr><td class='l'>{e(sch.name)}</td>"
                         f"<td class='l'>{format_tick(sch.last_tick_ms)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Dead letters</h2>")
    if not read_only:
        parts.append(
            f"<form id='bulk' method='post' action='/services/{svc}/dead/replay' "
            "onsubmit=\"return confirm('Replay every dead letter matching the filter?')\">"
            "reason <input name='reason' size='12'> action type <input name='action_type' "
            "size='20'> <button>replay matching</button></form>")
    parts.append("<table id='dead'><tr><th class='l'>entry</th><th class='l'>reason</th>"
                 "<th class='l'>action type</th><th>deliveries</th><th class='l'>error</th>"
                 "<th></th></tr>")
    for d in letters:
        action_type, _ = action_fields(d.data)
        acts = "" if read_only else (
            _button(f"/services/{svc}/dead/{_u(d.entry_id)}/replay", "replay",
                    f"Replay {d.entry_id}?")
            + _button(f"/services/{svc}/dead/{_u(d.entry_id)}/delete", "delete",
                      f"Delete {d.entry_id} for good?"))
        parts.append(
            f"<tr><td class='l'><a href='/services/{svc}/entries/{_u(d.entry_id)}?dead=1'>"
            f"{e(d.entry_id)}</a></td><td class='l'>{e(d.reason)}</td>"
            f"<td class='l'>{e(action_type)}</td><td>{d.deliveries}</td>"
            f"<td class='l'>{e(d.error_type)}: {e(d.error_message[:200])}</td>"
            f"<td>{acts}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def entry_page(fields: dict[str, Any], pending: PendingEntry | None) -> str:
    """One entry: its fields (the action as indented JSON), deliveries and error."""
    data = fields.get("data", "")
    try:
        pretty = json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        pretty = str(data)
    rows = "".join(f"<tr><th class='l'>{e(k)}</th><td class='l'>{e(v)}</td></tr>"
                   for k, v in fields.items() if k != "data")
    if pending is not None:
        rows += (f"<tr><th class='l'>pending on</th><td class='l'>{e(pending.consumer)}</td></tr>"
                 f"<tr><th class='l'>deliveries</th><td class='l deliveries'>{pending.deliveries}"
                 f"</td></tr><tr><th class='l'>idle</th><td class='l'>{age(pending.idle_ms)}</td>"
                 "</tr>")
    return f"<table id='fields'>{rows}</table><h2>Action</h2><pre id='json'>{e(pretty)}</pre>"
