"""``actionbus worker MODULE:ATTRIBUTE``: run a worker, or a supervisor of N worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import click

from actionbus.cli.app import main, settings
from actionbus.cli.wire import load_worker
from actionbus.clients.queue_manager import QueueManager
from actionbus.logconfig import configure_logging
from actionbus.workers.base_worker import BaseWorker

__all__ = ["apply_options", "worker"]

_ENV = {"redis_url": "REDIS_URL", "environment": "ENVIRONMENT", "key_prefix": "KEY_PREFIX"}
SLOT_ENV = "ACTIONBUS_WORKER_SLOT"
"""Set by the supervisor: the child's number (0…N-1), part of its stable metrics instance."""


def apply_options(instance: BaseWorker, overrides: dict[str, Any], concurrency: int | None) -> None:
    """Point a loaded worker at the global options' Redis, environment and prefix."""
    changed = {k: v for k, v in overrides.items()
               if k in _ENV and v is not None and getattr(instance.app_settings, k) != v}
    if changed:
        instance.app_settings = instance.app_settings.model_copy(update=changed)
        s = instance.app_settings
        instance.queue_manager = QueueManager(s.environment, s.key_prefix)
        instance.stream = instance.queue_manager.get_service_action_stream(instance.service_name)
    if concurrency is not None:
        instance.settings = instance.settings.model_copy(update={"concurrency": concurrency})


def instance_label() -> str:
    """A metrics ``instance`` label that survives restarts: host, and slot under a supervisor."""
    slot = os.environ.get(SLOT_ENV)
    return f"{socket.gethostname()}-{slot}" if slot else socket.gethostname()


def _serve_metrics(instance: BaseWorker, port: int) -> None:
    try:
        from prometheus_client import REGISTRY, start_http_server
    except ImportError:
        raise click.ClickException(
            "--metrics-port needs prometheus-client: pip install 'actionbus[prometheus]'"
        ) from None
    from actionbus.metrics import QueueMetrics, WorkerMetrics

    REGISTRY.register(WorkerMetrics([instance], instance=instance_label()))
    REGISTRY.register(QueueMetrics(instance))
    start_http_server(port, addr=os.environ.get("ACTIONBUS_METRICS_ADDR", "0.0.0.0"))


def _run(instance: BaseWorker) -> None:
    try:
        import uvloop
    except ImportError:  # a plain [cli] install: the standard event loop is fine
        asyncio.run(instance.run())
    else:
        uvloop.run(instance.run())


def _supervise(processes: int) -> None:
    """Run ``processes`` copies of this command; restart a crashed one; forward SIGTERM."""
    argv = list(sys.argv[1:])
    i = argv.index("--processes") if "--processes" in argv else -1
    if i >= 0:
        argv[i + 1] = "1"
    else:
        argv = [a if not a.startswith("--processes=") else "--processes=1" for a in argv]
    command = [sys.executable, "-m", "actionbus.cli", *argv]
    stopping = False

    def start(slot: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env={**os.environ, SLOT_ENV: str(slot)})

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    children = {slot: start(slot) for slot in range(processes)}
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    click.echo(f"supervising {processes} worker processes: "
               f"{', '.join(str(c.pid) for c in children.values())}", err=True)
    while children:
        time.sleep(0.2)
        for slot, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            if stopping or code == 0:
                del children[slot]
                continue
            click.echo(f"worker process {child.pid} (slot {slot}) exited with {code}; "
                       "restarting it", err=True)
            time.sleep(0.5)
            children[slot] = start(slot)


@main.command()
@click.argument("target")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Actions handled at the same time (default: the worker's setting).")
@click.option("--log-level", default=None,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Default: $LOG_LEVEL (the settings' log_level).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run N worker processes under a supervisor that restarts crashed ones.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Serve Prometheus metrics on this port (+ the slot under --processes).")
@click.pass_context
def worker(ctx: click.Context, target: str, concurrency: int | None, log_level: str | None,
           processes: int, metrics_port: int | None) -> None:
    """Run the worker at MODULE:ATTRIBUTE until SIGINT/SIGTERM (global --url, --environment
    and --prefix apply to it)."""
    root = ctx.find_root()
    # Only options typed on the command line override the worker's own settings (which
    # already read $REDIS_URL and the rest of the environment, and which its code may set).
    options = {k: v for k, v in root.obj.items() if v is not None
               and root.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE}
    for field, var in _ENV.items():  # a worker built at import time reads these too
        if field in options:
            os.environ[var] = str(options[field])
    if processes > 1:
        load_worker(target)  # fail here, once, rather than in every child
        _supervise(processes)
        return
    instance = load_worker(target)
    apply_options(instance, options, concurrency)
    configure_logging((log_level or instance.app_settings.log_level).upper())
    settings(ctx)  # the CLI's own settings: invalid global options fail here, in one line
    if metrics_port is not None:
        _serve_metrics(instance, metrics_port + int(os.environ.get(SLOT_ENV, "0")))
    _run(instance)
