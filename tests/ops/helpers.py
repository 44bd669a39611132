"""Running the ``actionbus`` command as a user would: a subprocess with real output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
