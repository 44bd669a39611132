"""Running the ``actionbus`` command as a user would: a subprocess with real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actionbus import QueueManager
from actionbus.workers.presence import presence_key

WORKER_MODULE = '''
from actionbus import BaseWorker, CommonAppSettings, WorkerSettings
from actionbus.exceptions import ActionRejected


def make():
    worker = BaseWorker(CommonAppSettings(service_name="inventory"),
                        worker_settings=WorkerSettings(block_ms=100, max_deliveries=2,
                                                       retry_backoff_base_s=0.01))

    @worker.handler("inventory.count")
    async def count(action, data):
        return {"n": 1}

    @worker.handler("inventory.bad")
    async def bad(action, data):
        raise ActionRejected("no such sku")

    return worker


def make_pinned():
    """Settings written in the code (another server, another environment)."""
    return BaseWorker(CommonAppSettings(service_name="inventory", environment="dev",
                                        redis_url="redis://127.0.0.1:1/0"),
                      worker_settings=WorkerSettings(block_ms=100))
'''


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Redis/actionbus settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "ACTIONBUS_")) and k not in ("ENVIRONMENT", "KEY_PREFIX")}
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    """The argv of ``actionbus ARGS…``."""
    return [sys.executable, "-m", "actionbus.cli", *args]


def cli(*args: str, input: str | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``actionbus ARGS…`` to completion (bounded)."""
    return subprocess.run(command(*args), capture_output=True, text=True, input=input,
                          cwd=cwd, env=env or clean_env(), timeout=60, check=False)


def worker_dir(tmp_path: Path) -> Path:
    """A directory holding ``svc_mod.py`` (``svc_mod:make`` builds an inventory worker)."""
    (tmp_path / "svc_mod.py").write_text(WORKER_MODULE)
    return tmp_path


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` until truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def lane_action(action_type: str = "inventory.count") -> str:
    """An action's JSON as a foreign producer writes it (a fresh action id)."""
    return json.dumps({"action_type": action_type, "action_id": str(uuid.uuid4()), "data": {}})


def lane_backlog(redis: Any, service: str = "inventory") -> dict[str, list[str]]:
    """``service`` as lane-reading workers leave it (a group on each lane, the descriptor):
    high: 2 pending on c1 (alive) + 1 waiting; normal: 5 waiting; low: 40 waiting, the first
    added 10 minutes ago; 1 retry in the low lane's delayed set. Returns the pending ids."""
    qm = QueueManager("dev")
    for stream in qm.get_lane_streams(service):
        redis.xgroup_create(stream, service, id="0", mkstream=True)
    redis.set(qm.get_lanes_key(service), "high,normal,low", ex=600)
    high, main, low = qm.get_lane_streams(service)
    stuck = [redis.xadd(high, {"data": lane_action("inventory.ask")}).decode() for _ in range(2)]
    redis.xreadgroup(service, "c1", {high: ">"}, count=2)
    redis.xadd(high, {"data": lane_action("inventory.ask")})
    for _ in range(5):
        redis.xadd(main, {"data": lane_action()})
    now_ms = int(time.time() * 1000)
    redis.xadd(low, {"data": lane_action("inventory.rebuild")}, id=f"{now_ms - 600_000}-1")
    for _ in range(39):
        redis.xadd(low, {"data": lane_action("inventory.rebuild")})
    redis.zadd(qm.get_delayed_set(service, "low"), {lane_action(): now_ms + 60_000})
    redis.hset(presence_key(qm, service), "c1", now_ms + 600_000)
    return {"high": stuck}
