"""README promises of the CLI: `worker --url`, `send --wait` with a reply, `replay <ids>`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from actionbus import DomainAction, QueueManager
from actionbus.cli import main


def _cli(redis_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--url", redis_url, "--service", "ops", *args])
    return result.exit_code, result.output


async def test_replay_of_named_ids_moves_only_those(bus: Any, qm: QueueManager, redis_url: str
                                                    ) -> None:
    """`dead-letters replay SERVICE ID ID` moves exactly the named dead letters back."""
    dead = qm.get_dead_letter_stream("inventory")
    ids = [
        (await bus.redis.xadd(dead, {"data": json.dumps({"n": n}), "reason": "rejected"})).decode()
        for n in range(3)
    ]
    code, out = await asyncio.to_thread(
        _cli, redis_url, "dead-letters", "replay", "inventory", ids[0], ids[2])
    assert code == 0, out
    assert "replayed 2" in out
    stream = qm.get_service_action_stream("inventory")
    replayed = [json.loads(f[b"data"])["n"] for _, f in await bus.redis.xrange(stream)]
    assert replayed == [0, 2]
    assert [i.decode() for i, _ in await bus.redis.xrange(dead)] == [ids[1]]


async def test_send_wait_prints_the_reply(bus: Any, make_worker: Any, redis_url: str) -> None:
    """`send --wait` prints the worker's DomainActionResponse with its data."""
    worker = make_worker("inventory")

    @worker.handler("inventory.stock.count")
    async def count(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"sku": data["sku"], "count": 7}

    await worker.start()
    code, out = await asyncio.to_thread(
        _cli, redis_url, "send", "inventory.stock.count", "--data", '{"sku": "A1"}',
        "--wait", "10")
    assert code == 0, out
    reply = json.loads(out)
    assert reply["success"] is True
    assert reply["data"] == {"sku": "A1", "count": 7}


async def test_worker_command_honours_url(bus: Any, redis_url: str, tmp_path: Path) -> None:
    """`actionbus --url URL worker MOD:ATTR` consumes from URL, not from the module's settings."""
    (tmp_path / "cliworker.py").write_text(textwrap.dedent("""
        from actionbus import BaseWorker, CommonAppSettings, WorkerSettings

        def make():
            settings = CommonAppSettings(service_name="cliw", redis_url="redis://127.0.0.1:1/0",
                                         _env_file=None)
            worker = BaseWorker(settings, worker_settings=WorkerSettings(block_ms=100))

            @worker.handler("cliw.op.ping")
            async def ping(action, data):
                return {"pong": True}

            return worker
    """))
    script = Path(sys.executable).parent / "actionbus"
    proc = await asyncio.create_subprocess_exec(
        str(script), "--url", redis_url, "worker", "cliworker:make", cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        response = await bus.client("caller").send_action_pseudo_sync(
            DomainAction(action_type="cliw.op.ping"), timeout=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 15)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
    assert response is not None, err.decode()[-2000:]
    assert response.data == {"pong": True}
