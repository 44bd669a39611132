"""The ``actionbus`` command, run as a subprocess: failures are one clear line, exit != 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SECRET = "Cli-S3cret-pw"


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ACTIONBUS_"))}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "actionbus.cli", *args], capture_output=True, text=True,
        env=base, cwd=cwd, timeout=60, check=False,
    )  # fmt: skip


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_line(result: Any, *needles: str) -> str:
    """Exit code 1, one `Error:` line on stderr, no traceback, no password."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_password(fresh_redis_server: Any) -> None:
    """A refused password says the credentials were refused and what to check."""
    with fresh_redis_server.client() as admin:
        admin.config_set("requirepass", "the-real-one")
    url = f"redis://:{SECRET}@127.0.0.1:{fresh_redis_server.port}/0"
    result = run("--url", url, "info", "inventory")
    assert_one_line(result, "refused the credentials", "password", str(fresh_redis_server.port))


def test_wrong_host() -> None:
    """A server that is not there is named (host:port) with what to check."""
    port = closed_port()
    url = f"redis://user:{SECRET}@127.0.0.1:{port}/0"
    assert_one_line(run("--url", url, "info", "inventory"), f"127.0.0.1:{port}", "Check")


def test_url_with_bad_port() -> None:
    """--url with a non-numeric port is an invalid value pointing at --url/REDIS_URL."""
    url = f"redis://user:{SECRET}@127.0.0.1:notaport/0"
    assert_one_line(run("--url", url, "info", "inventory"), "notaport", "REDIS_URL")


def test_http_url() -> None:
    """An http:// URL is refused naming redis_url and the allowed schemes."""
    url = f"http://user:{SECRET}@127.0.0.1:1/"
    assert_one_line(run("--url", url, "info", "inventory"), "redis_url", "rediss://")


def test_non_json_sentinels() -> None:
    """A REDIS_SENTINELS that is not JSON says lists are JSON, with an example."""
    result = run("info", "inventory", env={"REDIS_SENTINELS": "127.0.0.9:26379"})
    assert_one_line(result, "redis_sentinels", "JSON")


def test_bad_worker_setting(tmp_path: Path, redis_url: str) -> None:
    """ACTIONBUS_WORKER_CONCURRENCY=abc names the variable and the problem."""
    (tmp_path / "svc_mod.py").write_text(
        "from actionbus import BaseWorker, CommonAppSettings\n"
        "def make():\n    return BaseWorker(CommonAppSettings(service_name='svc'))\n"
    )
    result = run("worker", "svc_mod:make", cwd=tmp_path,
                 env={"ACTIONBUS_WORKER_CONCURRENCY": "abc", "REDIS_URL": redis_url})  # fmt: skip
    assert_one_line(result, "ACTIONBUS_WORKER_CONCURRENCY", "integer")


def test_debug_shows_the_traceback() -> None:
    """--debug shows the traceback instead of the one-line error (still no clean exit)."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = run("--debug", "--url", url, "info", "inventory")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


@pytest.mark.parametrize("command", [["info", "inventory"], ["dead-letters", "list", "svc"]])
def test_every_command_is_covered(command: list[str]) -> None:
    """Connection failures are one line for every Redis-using command."""
    assert_one_line(run("--url", f"redis://127.0.0.1:{closed_port()}/0", *command), "Check")


def test_scrub_masks_any_password_and_joins_lines() -> None:
    """Error text is one line with URL userinfo and *password*= values masked."""
    from actionbus.cli_errors import scrub

    text = f"bad\nredis://u:{SECRET}@h:1/0?ssl_password={SECRET}&db=0 and password={SECRET}"
    out = scrub(text)
    assert SECRET not in out
    assert "\n" not in out
    assert "redis://u:***@h:1/0" in out
