"""The README never lies: its examples run against a real Redis and its tables are complete."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DelayedQueue,
    DomainAction,
    QueueManager,
    RedisManager,
    WorkerSettings,
)

README = (Path(__file__).parent.parent / "README.md").read_text()
REDIS_CLI = shutil.which("redis-cli")


def block(name: str) -> str:
    """The fenced code block that follows the ``<!-- readme-test: name -->`` marker."""
    match = re.search(rf"<!-- readme-test: {name} -->\n```\w+\n(.*?)```", README, re.S)
    assert match, f"README has no block marked {name}"
    return match.group(1)


def cli_lines(name: str) -> list[list[str]]:
    """The redis-cli commands of a shell block, comments left out."""
    return [shlex.split(line)[1:] for line in block(name).splitlines()
            if line.startswith("redis-cli ")]


def redis_cli(url: str, *args: str) -> list[str]:
    """Run redis-cli against ``url``; return its output lines."""
    assert REDIS_CLI is not None
    out = subprocess.run([REDIS_CLI, "-u", url, *args], capture_output=True, text=True,
                         timeout=10, check=True)
    return out.stdout.splitlines()


EXAMPLE_OUTPUT: dict[str, list[str] | None] = {
    "quickstart": ["{'sku': 'A1', 'reserved': 2}"],
    "connections": ["b'hello'"],
    "state": [],  # it asserts its own result (10 visits, no lost update)
    "typed-state": [],
    "delayed": None,  # prints due times and generated ids
    "delayed-worker": [],
    "pipeline": [],
    "inspect": None,  # prints the shared test server's current numbers
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_OUTPUT))
def test_python_examples_run(redis_url: str, name: str) -> None:
    """Each Python example of the README runs against a real Redis and prints exactly what
    the README says it prints (the ``print(...)  # output`` comments)."""
    env = {**os.environ, "REDIS_URL": redis_url}
    result = subprocess.run([sys.executable, "-c", block(name)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = EXAMPLE_OUTPUT[name]
    if expected is None:
        return
    assert result.stdout.splitlines() == expected, result.stderr[-3000:]
    promised = re.findall(r"^\s*print\(.*\)\s+# (.*)$", block(name), re.M)
    assert all(line in expected for line in promised)


class Reserve(BaseModel):
    sku: str
    quantity: int


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
async def test_raw_redis_cli_request_gets_a_reply_from_a_worker(redis_url: str) -> None:
    """The README's redis-cli request, sent to a running worker, gets its documented reply."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory", redis_url=redis_url),
                        worker_settings=WorkerSettings(block_ms=100))

    @worker.handler("inventory.stock.reserve", data_model=Reserve)
    async def reserve(action: DomainAction, data: Reserve) -> dict[str, object]:
        return {"sku": data.sku, "reserved": data.quantity}

    xadd, brpop = cli_lines("raw-request")
    async with worker:
        await asyncio.to_thread(redis_cli, redis_url, *xadd)
        lines = await asyncio.to_thread(redis_cli, redis_url, *brpop)
    assert lines[0] == "actionbus:dev:{shell}:responses:req-1"
    reply = json.loads(lines[1])
    assert reply["correlation_id"] == "req-1"
    assert reply["success"] is True
    assert reply["data"] == {"sku": "A1", "reserved": 2}


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
async def test_raw_redis_cli_answer_reaches_a_pseudo_sync_caller(redis_url: str) -> None:
    """A service that answers by hand as the README shows completes a pseudo-sync call."""
    settings = CommonAppSettings(service_name="orders", redis_url=redis_url)
    create, read, lpush, expire, xack = cli_lines("raw-answer")
    redis_cli(redis_url, "DEL", create[2])  # the shared server: start without others' entries
    redis_cli(redis_url, *create)
    async with RedisManager(settings) as manager:
        client = BaseRedisClient("orders", manager.get_client(), settings)
        call = asyncio.create_task(client.send_action_pseudo_sync(
            DomainAction(action_type="billing.invoice.create", correlation_id="c-9"), timeout=10))
        lines: list[str] = []
        for _ in range(100):
            lines = await asyncio.to_thread(redis_cli, redis_url, *read)
            if any(lines):  # a nil reply (nothing yet) prints one empty line
                break
            await asyncio.sleep(0.05)
        entry_id, request = lines[1], json.loads(lines[3])
        queue = request["callback_queue_name"]

        def real(args: list[str]) -> list[str]:
            return [a.replace("actionbus:dev:{orders}:responses:abc", queue)
                    .replace("1795320000000-0", entry_id) for a in args]

        for command in (lpush, expire, xack):
            await asyncio.to_thread(redis_cli, redis_url, *real(command))
        response = await call
        await client.close()
    assert response is not None
    assert response.success
    assert response.data == {"invoice": "F-1"}
    assert response.correlation_id == "c-9"


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
async def test_raw_redis_cli_delayed_send_is_moved_into_the_stream(redis_url: str) -> None:
    """The README's one-ZADD delayed send is moved, unchanged, into the service's stream."""
    [zadd] = cli_lines("raw-delayed")
    await asyncio.to_thread(redis_cli, redis_url, *zadd)
    settings = CommonAppSettings(service_name="ops", redis_url=redis_url)
    async with RedisManager(settings) as manager:
        queue = DelayedQueue(manager.get_client(), QueueManager(), "inventory")
        assert (await queue.move_due_report(now_ms=int(zadd[2]))).moved == 1
        [(_id, fields)] = await manager.get_client().xrange(queue.stream)
    assert fields[b"data"].decode() == zadd[3]
    action = DomainAction.model_validate_json(fields[b"data"])
    assert (action.action_type, action.data) == ("inventory.stock.count", {"sku": "A1"})


@pytest.mark.parametrize("model", [CommonAppSettings, WorkerSettings])
def test_every_setting_is_documented(model: type[BaseModel]) -> None:
    """Every settings field appears in the README's configuration tables."""
    missing = [name for name in model.model_fields if f"`{name}`" not in README]
    assert missing == []


def _documented_defaults() -> dict[str, str]:
    """The default cell of each setting in the configuration tables, rows like
    ``| `a` / `b` | `1` / `2` | ...`` split into one entry per name."""
    rows: dict[str, str] = {}
    for line in README.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        values = [value.strip() for value in cells[1].split(" / ")]
        if len(values) == 1:
            values *= len(names)
        if len(values) == len(names):
            rows.update(zip(names, values, strict=True))
    return rows


_NO_VALUE = {"unset", "service name", "host-pid-random"}
"""Words the tables use for a default of ``None`` (filled in at run time, or off)."""


@pytest.mark.parametrize("model", [CommonAppSettings, WorkerSettings])
def test_documented_defaults_match_the_settings(model: type[BaseModel]) -> None:
    """Every setting has a row whose default is the field's real default: literals compared
    by value, 'required' only for required fields, 'unset' and the like only for None."""
    documented = _documented_defaults()
    wrong = []
    for name, field in model.model_fields.items():
        shown = documented.get(name)
        if shown is None:
            wrong.append(f"{name}: no row with a default in the README")
        elif shown == "required":
            if not field.is_required():
                wrong.append(f"{name}: README says required, default is {field.default!r}")
        elif shown in _NO_VALUE:
            if field.is_required() or field.get_default(call_default_factory=True) is not None:
                wrong.append(f"{name}: README says {shown}, default is {field.default!r}")
        else:
            actual = field.get_default(call_default_factory=True)
            if isinstance(actual, bool):
                expected = str(actual).lower()
            elif isinstance(actual, list | dict):
                expected = json.dumps(actual)
            else:
                expected = str(actual)
            if shown.strip("`") not in {expected, expected.removesuffix(".0")}:
                wrong.append(f"{name}: README says {shown}, default is {actual!r}")
    assert wrong == []


def test_readme_shows_the_two_commands() -> None:
    """The README names `make demo` and `make test`."""
    assert "make demo" in README
    assert "make test" in README
