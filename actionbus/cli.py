"""The ``actionbus`` command (``pip install 'actionbus[cli]'``).

    actionbus info SERVICE                     stream, groups, consumers, pending, dead letters
    actionbus send ACTION_TYPE [--data JSON] [--wait SECONDS]
    actionbus dead-letters list SERVICE [--count N]
    actionbus dead-letters replay SERVICE (ENTRY_ID... | --all)
    actionbus delayed list SERVICE [--limit N]
    actionbus delayed cancel SERVICE ACTION_ID
    actionbus worker MODULE:ATTRIBUTE          run a BaseWorker (or a factory returning one)

Connection settings come from the environment (``REDIS_URL``, ``ENVIRONMENT``,
``KEY_PREFIX``…, see ``CommonAppSettings``); ``--url`` overrides the URL. Any failure
prints one line (``Error: what failed. what to check``, no password) and exits 1;
``--debug`` (or ``ACTIONBUS_DEBUG=1``) shows the traceback instead.
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

from actionbus.cli_errors import describe_error
from actionbus.clients.base_redis_client import BaseRedisClient
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.config import CommonAppSettings
from actionbus.dead_letters import DeadLetterQueue
from actionbus.delayed import DelayedQueue
from actionbus.inspect import inspect_service
from actionbus.models.actions import DomainAction
from actionbus.workers.base_worker import BaseWorker

__all__ = ["main"]

T = TypeVar("T")


def _settings(ctx: click.Context) -> CommonAppSettings:
    overrides: dict[str, Any] = {k: v for k, v in ctx.obj.items() if v is not None}
    overrides.setdefault("service_name", os.environ.get("SERVICE_NAME", "actionbus-cli"))
    return CommonAppSettings(**overrides)  # errors: one line from _Cli.invoke


def _queues(manager: RedisManager) -> QueueManager:
    return QueueManager(manager.settings.environment, manager.settings.key_prefix)


def _run(ctx: click.Context, work: Callable[[RedisManager], Awaitable[T]]) -> T:
    async def go() -> T:
        async with RedisManager(_settings(ctx)) as manager:
            return await work(manager)

    return asyncio.run(go())  # errors: one line from _Cli.invoke


_DEBUG = "actionbus.debug"


class _Cli(click.Group):
    """The command group: any failure becomes one ``Error:`` line unless ``--debug``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.meta.get(_DEBUG):
                raise
            raise click.ClickException(describe_error(exc)) from None


@click.group(cls=_Cli)
@click.option(
    "--debug", is_flag=True, envvar="ACTIONBUS_DEBUG",
    help="Show tracebacks and DEBUG logs instead of one-line errors.",
)  # fmt: skip
@click.option("--url", "redis_url", envvar="REDIS_URL", help="Redis URL (default: $REDIS_URL).")
@click.option("--environment", default=None, help="Key environment (default: $ENVIRONMENT/dev).")
@click.option("--prefix", "key_prefix", default=None, help="Key prefix (default: actionbus).")
@click.option("--service", "service_name", default=None, help="Name this CLI sends as.")
@click.pass_context
def main(ctx: click.Context, /, debug: bool, **options: str | None) -> None:
    """Inspect and operate actionbus services."""
    ctx.meta[_DEBUG] = debug
    ctx.obj = options
    level = logging.DEBUG if debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("service")
@click.pass_context
def info(ctx: click.Context, service: str) -> None:
    """Show a service's stream, consumer groups, consumers and dead letters."""

    async def work(manager: RedisManager) -> dict[str, Any]:
        info = await inspect_service(manager.get_client(), _queues(manager), service)
        return info.model_dump(mode="json")

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
        queue = DeadLetterQueue(manager.get_client(), _queues(manager), service)
        letters = await queue.list(count=count)
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
        queue = DeadLetterQueue(manager.get_client(), _queues(manager), service)
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


# --- delayed actions (actionbus delayed list|cancel) -----------------------------------------


@main.group("delayed")
def delayed() -> None:
    """List and cancel a service's delayed actions."""


def _delayed_queue(manager: RedisManager, service: str) -> DelayedQueue:
    qm = QueueManager(manager.settings.environment, manager.settings.key_prefix)
    return DelayedQueue(manager.get_client(), qm, service)


@delayed.command("list")
@click.argument("service")
@click.option("--limit", default=20, show_default=True, help="How many, soonest first.")
@click.pass_context
def list_delayed(ctx: click.Context, service: str, limit: int) -> None:
    """Print delayed actions as JSON lines: due time, action id and type, the action."""
    if limit <= 0:
        raise click.BadParameter(f"--limit must be positive, got {limit}")

    async def work(manager: RedisManager) -> tuple[int, list[str]]:
        queue = _delayed_queue(manager, service)
        entries = await queue.list(limit)
        lines = [json.dumps({"due_at": e.due_at.isoformat(), "action_id": e.action_id,
                             "action_type": e.action_type, "action": e.member})
                 for e in entries]
        return await queue.count(), lines

    total, lines = _run(ctx, work)
    for line in lines:
        click.echo(line)
    click.echo(f"{total} delayed action(s) for {service}", err=True)


@delayed.command("cancel")
@click.argument("service")
@click.argument("action_id")
@click.pass_context
def cancel_delayed(ctx: click.Context, service: str, action_id: str) -> None:
    """Cancel a delayed action before it is due."""

    async def work(manager: RedisManager) -> bool:
        return await _delayed_queue(manager, service).cancel(action_id)

    if not _run(ctx, work):
        raise click.ClickException(
            f"no delayed action {action_id} waits for {service} (already due and moved to its "
            "stream, cancelled, or never added); see `actionbus delayed list`"
        )
    click.echo(f"cancelled delayed action {action_id} of {service}")



# --- wire contract: `actionbus schema` and `actionbus asyncapi` (docs/wire-format.md) ---


@main.command("schema")
@click.option("--out", "out_dir", default="schemas", show_default=True,
              help="Directory to write the JSON Schemas into.")
def schema_command(out_dir: str) -> None:
    """Write the JSON Schemas of the wire messages (action, reply, callback, …)."""
    from pathlib import Path

    from actionbus.schema import write_schemas

    for path in write_schemas(Path(out_dir)):
        click.echo(str(path))


@main.command("asyncapi")
@click.argument("target")
@click.option("--out", "out_file", default=None, help="Write to this file instead of stdout.")
def asyncapi_command(target: str, out_file: str | None) -> None:
    """Print the AsyncAPI 3 document of the worker at MODULE:ATTRIBUTE."""
    from pathlib import Path

    from actionbus.schema import asyncapi_document

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:ATTRIBUTE, e.g. myservice.workers:worker")
    sys.path.insert(0, ".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {target}: {exc}") from None
    factory = callable(obj) and not isinstance(obj, BaseWorker | type)
    instance = obj() if factory else obj
    if not isinstance(instance, BaseWorker):
        raise click.BadParameter(f"{target} is not a BaseWorker or a factory of one: {obj!r}")
    text_out = json.dumps(asyncapi_document(instance), indent=2, ensure_ascii=False) + "\n"
    if out_file is None:
        click.echo(text_out, nl=False)
    else:
        Path(out_file).write_text(text_out, encoding="utf-8")


if __name__ == "__main__":  # python -m actionbus.cli
    main()
