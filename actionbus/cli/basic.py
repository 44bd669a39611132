"""``actionbus info`` and ``actionbus send``."""

from __future__ import annotations

import json
from typing import Any

import click
from pydantic import ValidationError

from actionbus.cli.app import main, queues, run
from actionbus.clients.base_redis_client import BaseRedisClient
from actionbus.clients.redis_manager import RedisManager
from actionbus.inspect import inspect_service
from actionbus.models.actions import DomainAction, DomainActionResponse
from actionbus.status import discover_services

__all__ = ["unknown_service"]


def unknown_service(service: str, manager: RedisManager, known: list[str]) -> click.ClickException:
    """The error for a service with no keys in this prefix and environment."""
    s = manager.settings
    where = f"{s.key_prefix}:{s.environment}"
    listed = ", ".join(known) if known else "none"
    return click.ClickException(
        f"no service {service!r} in {where} (services there: {listed}). Check the name, "
        "--environment and --prefix."
    )


@main.command()
@click.argument("service")
@click.pass_context
def info(ctx: click.Context, service: str) -> None:
    """Show a service's stream, consumer groups, consumers and dead letters (JSON)."""

    async def work(manager: RedisManager) -> dict[str, Any]:
        redis, qm = manager.get_client(), queues(manager)
        report = await inspect_service(redis, qm, service)
        if not report.exists:
            raise unknown_service(service, manager, await discover_services(redis, qm))
        return report.model_dump(mode="json")

    click.echo(json.dumps(run(ctx, work), indent=2))


@main.command()
@click.argument("action_type")
@click.option("--data", default="{}", help="The action's data, as a JSON object.")
@click.option("--wait", type=float, default=None, help="Wait this many seconds for a reply.")
@click.option("--strict", is_flag=True,
              help="Refuse (exit 1) instead of warning when the target has no consumer group.")
@click.pass_context
def send(ctx: click.Context, action_type: str, data: str, wait: float | None, strict: bool) -> None:
    """Send an action and print its action_id; with --wait, print the reply (exit 1 if it
    reports failure). Warns when no worker ever read the target's stream."""
    try:
        payload = json.loads(data)
        action = DomainAction(action_type=action_type, data=payload)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise click.BadParameter(str(exc)) from None

    async def work(manager: RedisManager) -> str | DomainActionResponse:
        redis = manager.get_client()
        stream = queues(manager).get_service_action_stream(action.target)
        groups: Any = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
        if not groups:
            problem = (
                f"service {action.target!r} has no consumer group on {stream}: no worker has "
                "ever read it. Check the action type, --environment and --prefix, or start "
                "its worker"
            )
            if strict:
                raise click.ClickException(f"{problem}; nothing was sent.")
            click.echo(f"Warning: {problem}; the action waits in the stream.", err=True)
        client = BaseRedisClient(manager.settings.service_name, redis, manager.settings)
        try:
            if wait is None:
                await client.send_action_async(action)
                return str(action.action_id)
            response = await client.send_action_pseudo_sync(action, timeout=wait)
            if response is None:
                raise click.ClickException(f"no reply within {wait}s to {action.action_id}")
            return response
        finally:
            await client.close()

    result = run(ctx, work)
    if isinstance(result, str):
        click.echo(result)
        return
    click.echo(result.model_dump_json(indent=2))
    if not result.success:
        error = result.error
        what = f"{error.error_type}: {error.message}" if error is not None else "no error given"
        raise click.ClickException(f"{action.action_type} {action.action_id} failed: {what}")
