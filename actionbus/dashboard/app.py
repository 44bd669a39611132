"""The dashboard's ASGI app (``pip install 'actionbus[dashboard]'``): Starlette, no build step.

``create_app(settings, read_only=False, token=None)``; ``actionbus dashboard`` serves it
with uvicorn. With a token, every request needs ``Authorization: Bearer <token>`` or the
cookie set by opening ``/?token=<token>`` once. Read-only mode refuses every action. Forms
post back to the same origin only (the ``Origin`` header is checked).
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from actionbus.clients.lanes import check_priority
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.dashboard import pages
from actionbus.dead_letters import DeadLetterQueue
from actionbus.exceptions import ActionBusError, DeadLetterError
from actionbus.inspect import inspect_service
from actionbus.status import (
    dead_letter_pending,
    discover_services,
    pending_entries,
    schedule_states,
    service_status,
)
from actionbus.streams import text

__all__ = ["create_app"]


def _lane(request: Request) -> str:
    """The ``?lane=`` of a request (``normal``: the main stream); an unknown lane is an
    ``InvalidNameError`` (shown as an error page)."""
    lane = request.query_params.get("lane") or "normal"
    check_priority(lane)
    return lane

_COOKIE = "actionbus_token"
Endpoint = Callable[[Request], Awaitable[Response]]


class _State:
    def __init__(self, settings: CommonAppSettings, read_only: bool, token: str | None) -> None:
        self.settings = settings
        self.read_only = read_only
        self.token = token
        self.queues = QueueManager(settings.environment, settings.key_prefix)
        self.manager = RedisManager(settings)
        self.history: dict[str, deque[float]] = {}
        self.where = f"{settings.key_prefix}:{settings.environment}"

    @property
    def redis(self) -> AnyRedis:
        return self.manager.get_client()


def create_app(settings: CommonAppSettings, *, read_only: bool = False,
               token: str | None = None) -> Starlette:
    """The dashboard of ``settings``' Redis, prefix and environment."""
    state = _State(settings, read_only, token)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.manager.initialize()
        try:
            yield
        finally:
            await state.manager.close()

    def guarded(endpoint: Endpoint, action: bool = False) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            if state.token is not None:
                given = request.query_params.get("token")
                if given is not None and hmac.compare_digest(given, state.token):
                    response = RedirectResponse(request.url.path, status_code=303)
                    response.set_cookie(_COOKIE, given, httponly=True, samesite="strict")
                    return response
                header = request.headers.get("authorization", "")
                supplied = header[7:] if header.lower().startswith("bearer ") else \
                    request.cookies.get(_COOKIE, "")
                if not hmac.compare_digest(supplied, state.token):
                    return HTMLResponse("401: a bearer token is required (open /?token=…)",
                                        status_code=401)
            if action:
                if state.read_only:
                    return HTMLResponse("403: the dashboard is read-only", status_code=403)
                origin = request.headers.get("origin")
                if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                    return HTMLResponse("403: cross-origin form refused", status_code=403)
            try:
                return await endpoint(request)
            except ActionBusError as exc:
                return HTMLResponse(pages.layout("Error", f"<p>{pages.e(exc)}</p>", state.where,
                                                 state.read_only), status_code=404)
        return wrapper

    async def _rows() -> list[Any]:
        rows = [await service_status(state.redis, state.queues, name)
                for name in await discover_services(state.redis, state.queues)]
        for row in rows:
            state.history.setdefault(row.service, deque(maxlen=60)).append(row.handled_per_s)
        return rows

    async def overview_fragment(request: Request) -> Response:
        history = {k: list(v) for k, v in state.history.items()}
        return HTMLResponse(pages.overview_table(await _rows(), history))

    async def overview(request: Request) -> Response:
        table = pages.overview_table(await _rows(), {k: list(v) for k, v in
                                                     state.history.items()})
        return HTMLResponse(pages.layout("Services", pages.overview(table), state.where,
                                         state.read_only))

    async def service(request: Request) -> Response:
        name = request.path_params["service"]
        redis, qm = state.redis, state.queues
        info = await inspect_service(redis, qm, name)
        if not info.exists:
            raise ActionBusError(f"no service {name!r} in {state.where}")
        row = await service_status(redis, qm, name, info)
        pending = await pending_entries(redis, qm, name, 50)
        recent = []
        for lane in [lane.lane for lane in info.lanes] or ["normal"]:
            raw: Any = await redis.xrevrange(qm.get_lane_stream(name, lane), count=20)
            recent += [(lane, text(i), text(f.get(b"data", f.get("data", "")))) for i, f in raw]
        recent.sort(key=lambda r: tuple(int(p) for p in r[1].split("-")), reverse=True)
        recent = recent[:20]
        letters = await DeadLetterQueue(redis, qm, name).list(count=50)
        schedules = await schedule_states(redis, qm, name)
        body = pages.service_page(row, info, pending, recent, letters[::-1], state.read_only,
                                  schedules)
        return HTMLResponse(pages.layout(name, body, state.where, state.read_only))

    async def entry(request: Request) -> Response:
        name, entry_id = request.path_params["service"], request.path_params["entry_id"]
        redis, qm = state.redis, state.queues
        if request.query_params.get("dead"):
            letter = await DeadLetterQueue(redis, qm, name).get(entry_id)
            fields: dict[str, Any] = letter.model_dump(mode="json")
            found = None
        else:
            lane = _lane(request)
            stream = qm.get_lane_stream(name, lane)
            raw: Any = await redis.xrange(stream, min=entry_id, max=entry_id, count=1)
            if not raw:
                raise ActionBusError(f"no entry {entry_id!r} in {stream}")
            fields = {text(k): text(v) for k, v in raw[0][1].items()}
            if lane != "normal":
                fields["lane"] = lane
            found = next((p for p in await pending_entries(redis, qm, name, 1000)
                          if p.entry_id == entry_id and p.lane == lane), None)
        return HTMLResponse(pages.layout(f"{name} {entry_id}", pages.entry_page(fields, found),
                                         state.where, state.read_only))

    def back(name: str) -> Response:
        return RedirectResponse(f"/services/{quote(name, safe='')}", status_code=303)

    async def replay(request: Request) -> Response:
        name = request.path_params["service"]
        await DeadLetterQueue(state.redis, state.queues, name).replay(
            request.path_params["entry_id"])
        return back(name)

    async def delete(request: Request) -> Response:
        name = request.path_params["service"]
        await DeadLetterQueue(state.redis, state.queues, name).delete(
            request.path_params["entry_id"])
        return back(name)

    async def bury(request: Request) -> Response:
        name = request.path_params["service"]
        await dead_letter_pending(state.redis, state.queues, name,
                                  request.path_params["entry_id"], reason="operator",
                                  lane=_lane(request))
        return back(name)

    async def bulk_replay(request: Request) -> Response:
        name = request.path_params["service"]
        # an urlencoded form, parsed here (no python-multipart dependency)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        reason = (form.get("reason") or [""])[0].strip() or None
        action_type = (form.get("action_type") or [""])[0].strip() or None
        queue = DeadLetterQueue(state.redis, state.queues, name)
        replayed, refused = 0, []
        for letter in await queue.list(count=10_000):
            kind, _ = pages.action_fields(letter.data)
            if (reason is None or letter.reason == reason) and (
                    action_type is None or kind == action_type):
                try:  # one letter that cannot be replayed does not stop the others
                    await queue.replay(letter.entry_id)
                    replayed += 1
                except DeadLetterError as exc:
                    refused.append(f"<li>{pages.e(letter.entry_id)}: {pages.e(exc)}</li>")
        if not refused:
            return back(name)
        body = (f"<p id='replayed'>replayed {replayed} dead letter(s) of {pages.e(name)}; "
                f"not replayed: {len(refused)}</p><ul id='refused'>{''.join(refused)}</ul>"
                f"<p><a href='/services/{quote(name, safe='')}'>back to {pages.e(name)}</a></p>")
        return HTMLResponse(pages.layout(f"{name}: bulk replay", body, state.where,
                                         state.read_only), status_code=409)

    routes = [
        Route("/", guarded(overview)),
        Route("/fragments/overview", guarded(overview_fragment)),
        Route("/services/{service}", guarded(service)),
        Route("/services/{service}/entries/{entry_id}", guarded(entry)),
        Route("/services/{service}/dead/replay", guarded(bulk_replay, True), methods=["POST"]),
        Route("/services/{service}/dead/{entry_id}/replay", guarded(replay, True),
              methods=["POST"]),
        Route("/services/{service}/dead/{entry_id}/delete", guarded(delete, True),
              methods=["POST"]),
        Route("/services/{service}/pending/{entry_id}/dead-letter", guarded(bury, True),
              methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
