"""What the demo's processes share: names, data models, settings, printing and reports.

The runner passes everything to the service processes through environment variables
(``ENV_*`` below); each service writes small JSON reports into a temp directory that the
runner reads back for the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PositiveInt

from actionbus.config import CommonAppSettings
from actionbus.workers.settings import WorkerSettings

# -- what the runner passes to the services -------------------------------------------------
ENV_REDIS_URL = "ACTIONBUS_DEMO_REDIS_URL"
ENV_ENVIRONMENT = "ACTIONBUS_DEMO_ENVIRONMENT"
ENV_REPORT_DIR = "ACTIONBUS_DEMO_REPORT_DIR"

# -- names -----------------------------------------------------------------------------------
ORDERS, INVENTORY = "orders", "inventory"
RESTOCK = "inventory.stock.restock"
RESERVE = "inventory.stock.reserve"
LEVELS = "inventory.stock.levels"
DEAD_LETTERS = "inventory.dead_letters.list"
RESERVATION_DONE = "orders.reservation.completed"  # the callback, handled by orders
STOCK_KEY = "stock"
INITIAL_STOCK = {"widget": 5, "gadget": 1}
FIRST_SERVICE_STEP = 3  # the runner prints steps 1-2, orders the next ones


# -- data models -----------------------------------------------------------------------------
class StockLevels(BaseModel):
    """The inventory's state, kept by ``RedisStateManager[StockLevels]``."""

    levels: dict[str, int] = Field(default_factory=dict)
    reserved: dict[str, int] = Field(default_factory=dict)


class StockChange(BaseModel):
    """``data`` of restock and reserve actions."""

    sku: str
    quantity: PositiveInt


class DeadLetterQuery(BaseModel):
    """``data`` of ``inventory.dead_letters.list``: wait until at least ``min_count`` exist."""

    min_count: int = Field(0, ge=0)
    wait_s: float = Field(3.0, ge=0, le=10)


# -- settings --------------------------------------------------------------------------------
def app_settings(service: str) -> CommonAppSettings:
    """Settings of one demo service, from what the runner passed (never from a .env)."""
    return CommonAppSettings(
        service_name=service,
        environment=os.environ[ENV_ENVIRONMENT],
        redis_url=os.environ[ENV_REDIS_URL],
        log_level="WARNING",
        _env_file=None,
    )


def worker_settings(concurrency: int) -> WorkerSettings:
    """Worker settings that ignore ``ACTIONBUS_WORKER_*`` variables of the caller's shell."""
    return WorkerSettings(concurrency=concurrency, shutdown_grace_s=5.0, block_ms=1000)


# -- printing --------------------------------------------------------------------------------
_COLOR = sys.stdout.isatty() and "NO_COLOR" not in os.environ
_SERVICE_COLOR = {"demo": "1", ORDERS: "36", INVENTORY: "33"}
TAG_WIDTH = len("[inventory]")


def style(text: str, code: str) -> str:
    """``text`` in ANSI style ``code`` when printing to a terminal."""
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


def say(who: str, text: str, *, step: int | None = None) -> None:
    """Print one line of the story: step number, which process, what happened."""
    number = f"{step:>2}." if step is not None else "   "
    tag = f"[{who}]".ljust(TAG_WIDTH)
    line = f"{number} {style(tag, _SERVICE_COLOR.get(who, '0'))}  {text}"
    print(style(line, "1") if step is not None and _COLOR else line, flush=True)


def short(text: str, limit: int = 110) -> str:
    """One line of at most ``limit`` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class _ServiceLogFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        number = "   "
        tag = style(f"[{self.service}]".ljust(TAG_WIDTH), _SERVICE_COLOR.get(self.service, "0"))
        text = f"library log {record.levelname} {record.name}: {short(record.getMessage(), 130)}"
        return f"{number} {tag}  {style(text, '2')}"


def setup_logging(service: str) -> None:
    """Library logs at WARNING and above, as one short dimmed line each, on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_ServiceLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


# -- reports ---------------------------------------------------------------------------------
def report_dir() -> Path:
    """Where this run's reports go."""
    return Path(os.environ[ENV_REPORT_DIR])


def write_report(name: str, content: dict[str, Any]) -> None:
    """Write ``<name>.json`` atomically, so the runner never reads half a file."""
    target = report_dir() / f"{name}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, default=str))
    tmp.replace(target)


def read_report(directory: Path, name: str) -> dict[str, Any] | None:
    """A report written by ``write_report``, or None if it is not there."""
    try:
        data: dict[str, Any] = json.loads((directory / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return data


async def stop_when_orphaned(request_stop: Any) -> None:
    """Call ``request_stop()`` if the runner dies, so no service outlives it."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(0.5)
        if os.getppid() != parent:
            request_stop()
            return


def run_service(service: str, coro: Any) -> int:
    """Run a service's ``main`` coroutine; a failure is printed briefly, exit code 1."""
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return int(asyncio.run(coro))
        except Exception as exc:
            say(service, style(f"service failed: {type(exc).__name__}: {exc}", "31"))
            return 1
    return 130
