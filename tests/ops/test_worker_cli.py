"""``actionbus worker`` as a subprocess: global options, presence, logs, supervisor, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .helpers import clean_env, cli, command, wait_until, worker_dir

NS = ("--environment", "staging", "--prefix", "acme")


def _status(url: str) -> dict[str, Any]:
    result = cli("--url", url, *NS, "status", "--json")
    report: dict[str, Any] = json.loads(result.stdout) if result.returncode == 0 else {}
    return report["services"][0] if report else {}


def _start(tmp_path: Path, url: str, *options: str,
           target: str = "svc_mod:make") -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "worker.log"
    env = clean_env(ACTIONBUS_PRESENCE_INTERVAL_S="0.2")
    with log.open("w") as sink:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            command("--url", url, *NS, "worker", target, *options),
            cwd=worker_dir(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=sink,
            text=True,
        )
    return proc, log


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_worker_honours_global_options_and_logs_each_action(tmp_path: Path,
                                                            redis_url: str) -> None:
    """With only --url/--environment/--prefix (no REDIS_URL) the worker serves acme:staging;
    --log-level DEBUG logs one line per action with its fields; send --wait exits 1 on an
    error reply; a stopped worker shows as gone at once."""
    proc, log = _start(tmp_path, redis_url, "--log-level", "DEBUG", "--concurrency", "4")
    try:
        wait_until(lambda: _status(redis_url).get("consumers_alive") == 1, what="alive worker")
        ok = cli("--url", redis_url, *NS, "send", "inventory.count", "--wait", "10")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["success"] is True
        bad = cli("--url", redis_url, *NS, "send", "inventory.bad", "--wait", "10")
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["success"] is False
        assert "Error: inventory.bad" in bad.stderr
        assert "no such sku" in bad.stderr
    finally:
        assert _stop(proc) == 0
    text = log.read_text()
    line = next(x for x in text.splitlines() if " DEBUG " in x and "inventory.count" in x)
    for field in ("action_type=inventory.count", "outcome=handled", "duration_ms=",
                  "correlation_id=", "service=inventory"):
        assert field in line, line
    assert any(" INFO " in x and "outcome=failed" in x for x in text.splitlines())
    row = _status(redis_url)  # a clean stop removes its heartbeat at once
    assert (row["consumers_alive"], row["consumers_gone"]) == (0, 1)


def test_global_options_win_over_settings_in_the_code(tmp_path: Path, redis_url: str) -> None:
    """A worker whose code pins another URL and environment still serves --url and
    --environment/--prefix when they are given."""
    proc, log = _start(tmp_path, redis_url, target="svc_mod:make_pinned")
    try:
        wait_until(lambda: _status(redis_url).get("consumers_alive") == 1 or proc.poll(),
                   what="alive worker")
        assert proc.poll() is None, log.read_text()
    finally:
        assert _stop(proc) == 0


def test_killed_worker_shows_as_gone(tmp_path: Path, redis_url: str) -> None:
    """A worker killed with SIGKILL turns from alive to gone once its heartbeat lapses."""
    proc, _ = _start(tmp_path, redis_url)
    try:
        wait_until(lambda: _status(redis_url).get("consumers_alive") == 1, what="alive")
        proc.kill()
        proc.wait(timeout=10)
        row = wait_until(lambda: (r := _status(redis_url)).get("consumers_gone") == 1 and r,
                         what="gone")
        assert row["consumers_alive"] == 0
    finally:
        _stop(proc)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_wrong_url_without_uvloop_is_one_line(tmp_path: Path) -> None:
    """Without uvloop installed, a wrong --url is one `Error:` line naming the server (and
    not claiming a connect timeout for an immediate refusal)."""
    fake = tmp_path / "no_uvloop"
    (fake / "uvloop").mkdir(parents=True)
    (fake / "uvloop" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'uvloop'\", name='uvloop')\n")
    port = _closed_port()
    env = clean_env(PYTHONPATH=str(fake))
    result = cli("--url", f"redis://127.0.0.1:{port}/0", "worker", "svc_mod:make",
                 cwd=worker_dir(tmp_path), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot reach Redis"), result.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "within" not in lines[0]  # refused at once: no "within 5.0s"
    assert "uvloop" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_supervisor_restarts_a_crashed_child_and_forwards_sigterm(tmp_path: Path,
                                                                  redis_url: str) -> None:
    """`--processes 2` runs two workers, restarts one killed with SIGKILL, and stops all on
    SIGTERM."""
    proc, log = _start(tmp_path, redis_url, "--processes", "2")
    try:
        wait_until(lambda: _status(redis_url).get("consumers_alive") == 2, what="two alive")
        first = wait_until(lambda: "supervising" in log.read_text() and log.read_text())
        pids = [int(p) for p in first.split("supervising 2 worker processes: ")[1]
                .splitlines()[0].split(", ")]
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: "restarting it" in log.read_text(), what="restart")
        wait_until(lambda: (r := _status(redis_url)).get("consumers_alive") == 2
                   and r.get("consumers_gone") == 1, what="restarted child alive")
    finally:
        assert _stop(proc) == 0
    for pid in pids[1:]:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or
                   "zombie" in Path(f"/proc/{pid}/status").read_text(), what="child exits")
    wait_until(lambda: _status(redis_url).get("consumers_alive") == 0, what="none alive")


def test_metrics_port_serves_histograms_and_queue_gauges(tmp_path: Path, redis_url: str) -> None:
    """`--metrics-port` serves the handler histogram and outcomes by action type, queue gauges
    read from Redis and a stable instance label (the host name, not host-pid-random)."""
    port = _closed_port()
    proc, _ = _start(tmp_path, redis_url, "--metrics-port", str(port))
    try:
        wait_until(lambda: _status(redis_url).get("consumers_alive") == 1, what="alive")
        assert cli("--url", redis_url, *NS, "send", "inventory.count", "--wait", "10"
                   ).returncode == 0

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        text = wait_until(lambda: (t := scrape()) and "handler_outcomes_total{" in t and t)
    finally:
        _stop(proc)
    host = socket.gethostname()
    assert ('actionbus_handler_outcomes_total{action_type="inventory.count",outcome="handled",'
            'service="inventory"} 1.0') in text
    assert ('actionbus_handler_duration_seconds_count{action_type="inventory.count",'
            'service="inventory"} 1.0') in text
    assert f'actionbus_actions_handled_total{{instance="{host}",service="inventory"}} 1.0' in text
    for gauge in ("waiting", "pending", "dead_letters", "delayed", "oldest_pending_age_seconds"):
        assert f'actionbus_queue_{gauge}{{service="inventory"}}' in text
