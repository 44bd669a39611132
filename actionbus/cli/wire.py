"""``actionbus delayed list|cancel``, ``actionbus schema`` and ``actionbus asyncapi``."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import click

from actionbus.cli.app import main, queues, run
from actionbus.clients.redis_manager import RedisManager
from actionbus.delayed import DelayedQueue
from actionbus.workers.base_worker import BaseWorker

__all__ = ["load_worker"]


def load_worker(target: str) -> BaseWorker:
    """The worker at ``MODULE:ATTRIBUTE`` (a worker or a factory of one)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:ATTRIBUTE, e.g. myservice.worker:worker")
    sys.path.insert(0, ".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {target}: {exc}") from None
    factory = callable(obj) and not isinstance(obj, BaseWorker | type)
    instance = obj() if factory else obj
    if not isinstance(instance, BaseWorker):
        raise click.BadParameter(f"{target} is not a BaseWorker or a factory of one: {obj!r}")
    return instance


@main.group("delayed")
def delayed() -> None:
    """List and cancel a service's delayed actions."""


def _delayed_queue(manager: RedisManager, service: str) -> DelayedQueue:
    return DelayedQueue(manager.get_client(), queues(manager), service)


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

    total, lines = run(ctx, work)
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

    if not run(ctx, work):
        raise click.ClickException(
            f"no delayed action {action_id} waits for {service} (already due and moved to its "
            "stream, cancelled, or never added); see `actionbus delayed list`"
        )
    click.echo(f"cancelled delayed action {action_id} of {service}")


@main.command("schema")
@click.option("--out", "out_dir", default="schemas", show_default=True,
              help="Directory to write the JSON Schemas into.")
def schema_command(out_dir: str) -> None:
    """Write the JSON Schemas of the wire messages (action, reply, callback, …)."""
    from actionbus.schema import write_schemas

    for path in write_schemas(Path(out_dir)):
        click.echo(str(path))


@main.command("asyncapi")
@click.argument("target")
@click.option("--out", "out_file", default=None, help="Write to this file instead of stdout.")
def asyncapi_command(target: str, out_file: str | None) -> None:
    """Print the AsyncAPI 3 document of the worker at MODULE:ATTRIBUTE."""
    from actionbus.schema import asyncapi_document

    instance = load_worker(target)
    text_out = json.dumps(asyncapi_document(instance), indent=2, ensure_ascii=False) + "\n"
    if out_file is None:
        click.echo(text_out, nl=False)
    else:
        Path(out_file).write_text(text_out, encoding="utf-8")
