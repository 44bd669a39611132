"""``actionbus dashboard [--host] [--port] [--read-only] [--token]``."""

from __future__ import annotations

import click

from actionbus.cli.app import main, settings

__all__ = ["dashboard"]


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--read-only", is_flag=True, help="Show everything, allow no action.")
@click.option("--token", envvar="ACTIONBUS_DASHBOARD_TOKEN", default=None,
              help="Require this bearer token (default: $ACTIONBUS_DASHBOARD_TOKEN).")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, read_only: bool,
              token: str | None) -> None:
    """Serve the web dashboard: services, consumers, pending entries, dead letters."""
    try:
        import uvicorn

        from actionbus.dashboard.app import create_app
    except ImportError:
        raise click.ClickException(
            "the dashboard needs starlette and uvicorn: pip install 'actionbus[dashboard]'"
        ) from None
    app = create_app(settings(ctx), read_only=read_only, token=token)
    click.echo(f"actionbus dashboard on http://{host}:{port}/"
               f"{' (read-only)' if read_only else ''}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
