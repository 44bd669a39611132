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


@pytest.mark.parametrize(
    "name",
    ["quickstart", "connections", "state", "typed-state", "delayed", "delayed-worker", "pipeline",
     "inspect"],
)
def test_python_examples_run(redis_url: str, name: str) -> None:
    """Each Python example of the README runs to completion against a real Redis."""
    env = {**os.environ, "REDIS_URL": redis_url}
    result = subprocess.run([sys.executable, "-c", block(name)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


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
    redis_cli(redis_url, *create)
    async with RedisManager(settings) as manager:
        client = BaseRedisClient("orders", manager.get_client(), settings)
        call = asyncio.create_task(client.send_action_pseudo_sync(
            DomainAction(action_type="billing.invoice.create", correlation_id="c-9"), timeout=10))
        lines: list[str] = []
        for _ in range(100):
            lines = await asyncio.to_thread(redis_cli, redis_url, *read)
            if lines:
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


@pytest.mark.parametrize("model", [CommonAppSettings, WorkerSettings])
def test_documented_defaults_match_the_settings(model: type[BaseModel]) -> None:
    """Each single-value default in the configuration tables is the field's real default."""
    wrong = []
    for name, field in model.model_fields.items():
        row = re.search(rf"^\| `{name}` \| `([^`]*)` \|", README, re.M)
        if row is None or field.default_factory is not None:
            continue  # combined rows and computed defaults are checked by reading
        shown, actual = row.group(1), field.default
        expected = str(actual).lower() if isinstance(actual, bool) else str(actual)
        if shown not in {expected, expected.removesuffix(".0")}:
            wrong.append(f"{name}: README says {shown}, default is {actual!r}")
    assert wrong == []


def test_readme_shows_the_two_commands() -> None:
    """The README names `make demo` and `make test`."""
    assert "make demo" in README
    assert "make test" in README
