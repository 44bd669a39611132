"""The ``actionbus`` command group, its global options and the helpers every command uses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import click
    from rich.console import Console
except ImportError:  # pragma: no cover - exercised only without the extra
    sys.exit("the actionbus command needs click and rich: pip install 'actionbus[cli]'")

from actionbus.cli_errors import describe_error
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.config import CommonAppSettings

__all__ = ["console", "emit_json", "main", "queues", "run", "settings"]

T = TypeVar("T")


def settings(ctx: click.Context) -> CommonAppSettings:
    """The connection settings: global options over the environment."""
    root = ctx.find_root()
    overrides: dict[str, Any] = {k: v for k, v in root.obj.items() if v is not None}
    overrides.setdefault("service_name", os.environ.get("SERVICE_NAME", "actionbus-cli"))
    return CommonAppSettings(**overrides)  # errors: one line from _Cli.invoke


def queues(manager: RedisManager) -> QueueManager:
    """The key names of the manager's prefix and environment."""
    return QueueManager(manager.settings.environment, manager.settings.key_prefix)


def run(ctx: click.Context, work: Callable[[RedisManager], Awaitable[T]]) -> T:
    """Connect, run ``work(manager)``, close."""

    async def go() -> T:
        async with RedisManager(settings(ctx)) as manager:
            return await work(manager)

    return asyncio.run(go())  # errors: one line from _Cli.invoke


def console() -> Console:
    """A console on stdout (no colours when it is not a terminal)."""
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def emit_json(value: Any) -> None:
    """Print ``value`` as one JSON document (objects stay objects: no double encoding)."""
    click.echo(json.dumps(value, indent=2, default=str))


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
