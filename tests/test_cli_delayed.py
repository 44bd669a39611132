"""`actionbus delayed list|cancel`, run as a real subprocess against a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

from redis import Redis

from actionbus import DomainAction, QueueManager

DELAYED = QueueManager("dev").get_delayed_set("inventory")


def run_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``actionbus`` command in a new Python process."""
    return subprocess.run(
        [sys.executable, "-c", "from actionbus.cli import main; main()", "--url", redis_url, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_list_prints_due_time_id_and_action_soonest_first(redis_url: str) -> None:
    """`delayed list` prints one JSON line per action, soonest first, and the total on stderr."""
    soon, late = (DomainAction(action_type="inventory.stock.count", data={"n": n}) for n in (1, 2))
    Redis.from_url(redis_url).zadd(DELAYED, {late.model_dump_json(): 1_795_320_060_000,
                                             soon.model_dump_json(): 1_795_320_000_000})
    result = run_cli(redis_url, "delayed", "list", "inventory", "--limit", "1")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    shown = json.loads(line)
    assert shown["action_id"] == str(soon.action_id)
    assert shown["action_type"] == "inventory.stock.count"
    assert datetime.fromisoformat(shown["due_at"]) == datetime.fromtimestamp(1_795_320_000, UTC)
    assert json.loads(shown["action"])["data"] == {"n": 1}
    assert "2 delayed action(s) for inventory" in result.stderr


def test_cancel_removes_the_action_and_reports_a_missing_one(redis_url: str) -> None:
    """`delayed cancel` removes the action; cancelling it again exits 1 with the reason."""
    action = DomainAction(action_type="inventory.stock.count")
    redis = Redis.from_url(redis_url)
    redis.zadd(DELAYED, {action.model_dump_json(): 1_795_320_000_000})
    result = run_cli(redis_url, "delayed", "cancel", "inventory", str(action.action_id))
    assert result.returncode == 0, result.stderr
    assert f"cancelled delayed action {action.action_id} of inventory" in result.stdout
    assert redis.zcard(DELAYED) == 0
    again = run_cli(redis_url, "delayed", "cancel", "inventory", str(action.action_id))
    assert again.returncode == 1
    assert "already due and moved" in again.stderr


def test_cancel_refuses_a_malformed_id(redis_url: str) -> None:
    """`delayed cancel` with something that is not a UUID fails with a clear error."""
    result = run_cli(redis_url, "delayed", "cancel", "inventory", "abc")
    assert result.returncode == 1
    assert "is not an action id" in result.stderr
