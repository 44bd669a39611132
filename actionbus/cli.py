"""The ``actionbus`` command (``pip install 'actionbus[cli]'``).

    actionbus info SERVICE                     stream, groups, consumers, pending, dead letters
    actionbus send ACTION_TYPE [--data JSON] [--wait SECONDS]
    actionbus dead-letters list SERVICE [--count N]
    actionbus dead-letters replay SERVICE (ENTRY_ID... | --all)
    actionbus worker MODULE:ATTRIBUTE          run a BaseWorker (or a factory returning one)

Connection settings come from the environment (``REDIS_URL``, ``ENVIRONMENT``,
``KEY_PREFIX``…, see ``CommonAppSettings``); ``--url`` overrides the URL.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import click
except ImportError:  # pragma: no cover - exercised only without the extra
    sys.exit("the actionbus command needs click: pip install 'actionbus[cli]'")

from pydantic import ValidationError

from actionbus.clients.base_redis_client import BaseRedisClient
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.config import CommonAppSettings
from actionbus.dead_letters import DeadLetterQueue
from actionbus.exceptions import ActionBusError
from actionbus.models.actions import DomainAction
from actionbus.streams import text
from actionbus.workers.base_worker import BaseWorker

__all__ = ["main"]

T = TypeVar("T")


def _settings(ctx: click.Context) -> CommonAppSettings:
    overrides: dict[str, Any] = {k: v for k, v in ctx.obj.items() if v is not None}
    overrides.setdefault("service_name", os.environ.get("SERVICE_NAME", "actionbus-cli"))
    try:
        return CommonAppSettings(**overrides)
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from None


def _run(ctx: click.Context, work: Callable[[RedisManager], Awaitable[T]]) -> T:
    async def go() -> T:
        async with RedisManager(_settings(ctx)) as manager:
            return await work(manager)

    try:
        return asyncio.run(go())
    except ActionBusError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option("--url", "redis_url", envvar="REDIS_URL", help="Redis URL (default: $REDIS_URL).")
@click.option("--environment", default=None, help="Key environment (default: $ENVIRONMENT/dev).")
@click.option("--prefix", "key_prefix", default=None, help="Key prefix (default: actionbus).")
@click.option("--service", "service_name", default=None, help="Name this CLI sends as.")
@click.pass_context
def main(ctx: click.Context, /, **options: str | None) -> None:
    """Inspect and operate actionbus services."""
    ctx.obj = options
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("service")
@click.pass_context
def info(ctx: click.Context, service: str) -> None:
    """Show a service's stream, consumer groups, consumers and dead letters."""

    async def work(manager: RedisManager) -> dict[str, Any]:
        redis = manager.get_client()
        settings = manager.settings
        qm = QueueManager(settings.environment, settings.key_prefix)
        stream = qm.get_service_action_stream(service)
        report: dict[str, Any] = {"stream": stream, "length": await redis.xlen(stream)}
        groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
        report["groups"] = []
        for group in groups:
            name = text(group["name"])
            consumers = await redis.xinfo_consumers(stream, name)
            report["groups"].append({
                "name": name,
                "pending": int(group["pending"]),
                "last_delivered_id": text(group["last-delivered-id"]),
                "consumers": [
                    {"name": text(c["name"]), "pending": int(c["pending"]),
                     "idle_ms": int(c["idle"])}
                    for c in consumers
                ],
            })
        report["dead_letters"] = await DeadLetterQueue(redis, qm, service).count()
        return report

    click.echo(json.dumps(_run(ctx, work), indent=2))


@main.command()
@click.argument("action_type")
@click.option("--data", default="{}", help="The action's data, as a JSON object.")
@click.option("--wait", type=float, default=None, help="Wait this many seconds for a reply.")
@click.pass_context
def send(ctx: click.Context, action_type: str, data: str, wait: float | None) -> None:
    """Send an action; with --wait, as a pseudo-sync request, printing the reply."""
    try:
        payload = json.loads(data)
        action = DomainAction(action_type=action_type, data=payload)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise click.BadParameter(str(exc)) from None

    async def work(manager: RedisManager) -> str:
        client = BaseRedisClient(
            manager.settings.service_name, manager.get_client(), manager.settings
        )
        try:
            if wait is None:
                return await client.send_action_async(action)
            response = await client.send_action_pseudo_sync(action, timeout=wait)
            if response is None:
                raise click.ClickException(f"no reply within {wait}s")
            return response.model_dump_json(indent=2)
        finally:
            await client.close()

    click.echo(_run(ctx, work))


@main.group("dead-letters")
def dead_letters() -> None:
    """List and replay a service's dead letters."""


@dead_letters.command("list")
@click.argument("service")
@click.option("--count", default=20, show_default=True, help="How many, oldest first.")
@click.pass_context
def list_dead(ctx: click.Context, service: str, count: int) -> None:
    """Print dead letters as JSON lines."""

    async def work(manager: RedisManager) -> list[str]:
        qm = QueueManager(manager.settings.environment, manager.settings.key_prefix)
        letters = await DeadLetterQueue(manager.get_client(), qm, service).list(count=count)
        return [letter.model_dump_json() for letter in letters]

    for line in _run(ctx, work):
        click.echo(line)


@dead_letters.command("replay")
@click.argument("service")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.pass_context
def replay(ctx: click.Context, service: str, entry_ids: tuple[str, ...], replay_all: bool) -> None:
    """Move dead letters back to the service's action stream."""
    if not entry_ids and not replay_all:
        raise click.UsageError("name entry ids to replay, or pass --all")

    async def work(manager: RedisManager) -> int:
        qm = QueueManager(manager.settings.environment, manager.settings.key_prefix)
        queue = DeadLetterQueue(manager.get_client(), qm, service)
        if replay_all:
            return await queue.replay_all()
        for entry_id in entry_ids:
            await queue.replay(entry_id)
        return len(entry_ids)

    click.echo(f"replayed {_run(ctx, work)} dead letter(s) into {service}'s stream")


@main.command()
@click.argument("target")
@click.pass_context
def worker(ctx: click.Context, target: str) -> None:
    """Run the worker at MODULE:ATTRIBUTE until SIGINT/SIGTERM (``--url`` overrides its URL)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:ATTRIBUTE, e.g. myservice.worker:worker")
    sys.path.insert(0, ".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {target}: {exc}") from None
    instance = obj() if callable(obj) and not isinstance(obj, BaseWorker) else obj
    if not isinstance(instance, BaseWorker):
        raise click.BadParameter(f"{target} is not a BaseWorker (got {type(instance).__name__})")
    url = (ctx.obj or {}).get("redis_url")
    given = ctx.find_root().get_parameter_source("redis_url")
    if url and given is click.core.ParameterSource.COMMANDLINE:  # not $REDIS_URL: the
        # worker's own settings already read the environment, and its code may override it
        instance.app_settings = instance.app_settings.model_copy(update={"redis_url": url})
    logging.getLogger("actionbus").setLevel(logging.INFO)
    try:
        import uvloop

        uvloop.run(instance.run())
    except ImportError:
        asyncio.run(instance.run())
