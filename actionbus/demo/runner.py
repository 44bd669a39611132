"""The demo's conductor: Redis, the two service processes, shutdown and the summary.

``REDIS_URL`` set: that server is used (the demo's keys live under their own environment
name and are deleted afterwards). Not set: a redis-server of the demo's own is started on
a free loopback port and stopped at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from actionbus.config import mask_url
from actionbus.demo.common import (
    ENV_ENVIRONMENT,
    ENV_REDIS_URL,
    ENV_REPORT_DIR,
    FIRST_SERVICE_STEP,
    INVENTORY,
    ORDERS,
    read_report,
    say,
    style,
)
from actionbus.demo.summary import SUMMARY_TITLE, build_checks, print_summary
from actionbus.embedded import RedisServer
from actionbus.exceptions import ActionBusError

__all__ = ["DemoFailure", "main"]

START_TIMEOUT_S = 10.0
SCENARIO_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 8.0


class DemoFailure(Exception):
    """Something the demo needs did not happen; the message says what."""


class _Terminated(BaseException):
    """The runner itself got SIGTERM."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


class Services:
    """The service processes, started as ``python -m actionbus.demo.<name>``."""

    def __init__(self, env: dict[str, str], reports: Path) -> None:
        self.env = env
        self.reports = reports
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> int:
        """Start one service in its own session (Ctrl-C reaches only the runner)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", f"actionbus.demo.{name}"],
            env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.procs[name] = proc
        return proc.pid

    def wait_report(self, name: str, report: str, timeout: float) -> dict[str, Any]:
        """Wait until service ``name`` writes ``report``; fail if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while (found := read_report(self.reports, report)) is None:
            code = self.procs[name].poll()
            if code is not None:
                raise DemoFailure(f"the {name} service exited with code {code} before '{report}'")
            if time.monotonic() > deadline:
                raise DemoFailure(f"the {name} service did not report '{report}' in {timeout:.0f}s")
            time.sleep(0.02)
        return found

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every service (graceful worker shutdown), then reap; SIGKILL stragglers."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = None
                say("demo", style(f"{name} did not stop in {STOP_TIMEOUT_S:.0f}s: killed", "31"))
        self.procs.clear()
        return codes


def _delete_demo_keys(url: str, environment: str) -> None:
    """Remove this run's keys from a Redis the demo does not own."""
    with (
        contextlib.suppress(redis.RedisError, OSError, ValueError),
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as conn,
    ):
        keys = list(conn.scan_iter(match=f"actionbus:{environment}:*", count=500))
        if keys:
            conn.delete(*keys)


def _run(services: Services) -> bool:
    pid = services.start(INVENTORY)
    say("demo", f"started the inventory service: pid {pid}")
    services.wait_report(INVENTORY, f"{INVENTORY}.ready", START_TIMEOUT_S)
    pid = services.start(ORDERS)
    say("demo", f"started the orders service: pid {pid} (it runs the story below)")
    done = services.wait_report(ORDERS, f"{ORDERS}.done", SCENARIO_TIMEOUT_S)

    step = int(done.get("steps", FIRST_SERVICE_STEP)) + 1
    say("demo", "SIGTERM → both services: their workers finish in-flight work and stop",
        step=step)
    codes = services.stop()
    say("demo", "both service processes exited and were reaped: "
                + ", ".join(f"{name} exit code {code}" for name, code in codes.items()))

    say("demo", SUMMARY_TITLE, step=step + 1)
    checks = build_checks(
        done,
        read_report(services.reports, ORDERS),
        read_report(services.reports, INVENTORY),
        codes,
    )
    return print_summary(checks)


def main() -> int:
    """Run the demo; 0 if everything expected happened, 1 if not, 130 if interrupted."""
    print(style("actionbus demo: two services exchange DomainActions through Redis Streams",
                "1"), flush=True)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    url = os.environ.get("REDIS_URL") or None
    server: RedisServer | None = None
    environment = f"demo-{uuid.uuid4().hex[:8]}"
    reports = Path(tempfile.mkdtemp(prefix="actionbus-demo-"))
    services: Services | None = None
    try:
        if url is None:
            server = RedisServer().start()
            url = server.url
            say("demo", f"started redis-server (pid {server.pid}) on {server.host}:{server.port} "
                        "for this run (no REDIS_URL given)", step=1)
        else:
            say("demo", f"using REDIS_URL={mask_url(url)} (keys under actionbus:{environment}:)",
                step=1)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update({ENV_REDIS_URL: url, ENV_ENVIRONMENT: environment,
                    ENV_REPORT_DIR: str(reports)})
        services = Services(env, reports)
        say("demo", "start each service in its own OS process", step=2)
        ok = _run(services)
        return 0 if ok else 1
    except (KeyboardInterrupt, _Terminated):
        print(style("\ninterrupted: stopping the services and Redis", "31"), flush=True)
        return 130
    except (DemoFailure, ActionBusError) as exc:
        print(style(f"demo failed: {exc}", "31"), file=sys.stderr, flush=True)
        return 1
    finally:
        if services is not None:
            services.stop()
        if server is not None:
            pid = server.pid
            server.cleanup()
            say("demo", f"stopped redis-server (pid {pid})")
        elif url is not None:
            _delete_demo_keys(url, environment)
        shutil.rmtree(reports, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
