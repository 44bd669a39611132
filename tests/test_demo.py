"""The end-to-end demo (``python -m actionbus.demo``) run as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import redis

DEMO_TIMEOUT_S = 45


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actionbus.demo"],
        env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
    )  # fmt: skip


def _demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _redis_server_processes_on(port: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"redis-server" in part for part in cmdline[:1]) and str(port).encode() in cmdline:
            found.append(int(proc.name))
    return [pid for pid in found if _running(pid)]


def test_demo_with_redis_url_passes_and_cleans_up(redis_url: str) -> None:
    """With REDIS_URL set the demo uses that server, exits 0 with every summary check passed,
    and leaves no keys behind."""
    result = _run_demo(_demo_env(REDIS_URL=redis_url))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "using REDIS_URL=" in result.stdout
    assert "started redis-server" not in result.stdout
    assert "all 11 checks passed" in result.stdout, output
    for shown in (
        "(fire-and-forget)",
        "(pseudo-sync)",
        "← error response (success=False): ActionRejected [out_of_stock]",
        "⇠ callback orders.reservation.completed from inventory handled by orders' own worker",
        "worker.dead_letters.list() → 1 entry",
        "inventory exit code 0, orders exit code 0",
    ):
        assert shown in result.stdout, output
    assert "✗" not in result.stdout, output
    with redis.Redis.from_url(redis_url) as conn:
        assert conn.dbsize() == 0, sorted(conn.scan_iter())


def test_demo_without_redis_url_starts_and_stops_its_own_server() -> None:
    """Without REDIS_URL the demo starts its own redis-server, exits 0, and leaves no
    redis-server or service process running."""
    result = _run_demo(_demo_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "all 11 checks passed" in result.stdout, output
    started = re.search(r"started redis-server \(pid (\d+)\) on 127\.0\.0\.1:(\d+)", result.stdout)
    assert started is not None, output
    redis_pid, port = int(started.group(1)), int(started.group(2))
    assert port != 6379
    assert f"stopped redis-server (pid {redis_pid})" in result.stdout, output
    service_pids = [int(p) for p in re.findall(r"service: pid (\d+)", result.stdout)]
    assert len(service_pids) == 2, output
    assert [pid for pid in (redis_pid, *service_pids) if _running(pid)] == []
    assert _redis_server_processes_on(port) == []
    assert not _listening(port)
