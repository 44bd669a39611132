"""``actionbus status``, ``info`` and ``send`` run as subprocesses against a real Redis."""

from __future__ import annotations

import json
import time
import uuid

from redis import Redis

from actionbus import QueueManager
from actionbus.workers.presence import handled_key, presence_key

from .helpers import cli

QM = QueueManager("dev")
STREAM = QM.get_service_action_stream("inventory")
DEAD = QM.get_dead_letter_stream("inventory")


def _action(action_type: str = "inventory.count") -> str:
    return json.dumps({"action_type": action_type, "action_id": str(uuid.uuid4()), "data": {}})


def _backlog(redis: Redis) -> None:
    """30 entries read and acked, 3 pending (c1), 5 undelivered, 1 dead letter, 2 delayed."""
    redis.xgroup_create(STREAM, "inventory", id="$", mkstream=True)
    for _ in range(30):
        redis.xadd(STREAM, {"data": _action()})
    done = redis.xreadgroup("inventory", "c0", {STREAM: ">"}, count=30)
    redis.xack(STREAM, "inventory", *[i for i, _ in done[0][1]])
    for _ in range(3):
        redis.xadd(STREAM, {"data": _action("inventory.stuck")})
    redis.xreadgroup("inventory", "c1", {STREAM: ">"}, count=3)
    for _ in range(5):
        redis.xadd(STREAM, {"data": _action()})
    redis.xadd(DEAD, {"data": _action("inventory.bad"), "reason": "rejected",
                      "error_type": "ActionRejected", "error_message": "no such sku"})
    delayed = QM.get_delayed_set("inventory")
    redis.zadd(delayed, {_action(): time.time() * 1000 + 60_000, _action(): 1e15})
    now_ms = int(time.time() * 1000)
    redis.hset(presence_key(QM, "inventory"), mapping={"c1": now_ms + 60_000, "c0": now_ms - 1})
    redis.set(handled_key(QM, "inventory", int(time.time()) // 10), 120)


def test_status_shows_waiting_not_length(redis_url: str) -> None:
    """`status` prints waiting = group lag (5), pending 3, dead 1, delayed 2, alive/gone 1/1."""
    redis = Redis.from_url(redis_url)
    _backlog(redis)
    result = cli("--url", redis_url, "status")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "inventory" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:3] == ["inventory", "5", "3"], row
    assert cells[4:8] == ["1", "2", "1/1", "2.00"], row
    assert "ActionRejected: no such sku" in cells[8]
    report = json.loads(cli("--url", redis_url, "status", "--json").stdout)
    assert report["services"][0]["waiting"] == 5
    assert report["services"][0]["delayed"] == 2


def test_info_reports_waiting_and_liveness(redis_url: str) -> None:
    """`info` adds waiting (lag) and pending next to the length, and marks gone consumers."""
    _backlog(Redis.from_url(redis_url))
    result = cli("--url", redis_url, "info", "inventory")
    report = json.loads(result.stdout)
    assert (report["length"], report["waiting"], report["pending"]) == (38, 5, 3)
    alive = {c["name"]: c["alive"] for c in report["groups"][0]["consumers"]}
    assert alive == {"c0": False, "c1": True}


def test_status_service_lists_consumers_and_oldest_pending(redis_url: str) -> None:
    """`status SERVICE` adds its consumers (alive/gone) and its oldest pending entries."""
    _backlog(Redis.from_url(redis_url))
    result = cli("--url", redis_url, "status", "inventory")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("inventory.stuck") == 3
    consumers = {line.split("│")[2].strip(): line.split("│")[3].strip()
                 for line in result.stdout.splitlines() if line.count("│") >= 5
                 and line.split("│")[2].strip() in ("c0", "c1")}
    assert consumers == {"c0": "gone", "c1": "alive"}


def test_status_discovers_every_service(redis_url: str) -> None:
    """`status` finds services by SCAN: one with a stream, one with only dead letters."""
    redis = Redis.from_url(redis_url)
    redis.xadd(STREAM, {"data": _action()})
    redis.xadd(QM.get_dead_letter_stream("billing"), {"data": "x", "reason": "malformed"})
    redis.xadd(QueueManager("prod").get_service_action_stream("other"), {"data": "x"})
    report = json.loads(cli("--url", redis_url, "status", "--json").stdout)
    assert [s["service"] for s in report["services"]] == ["billing", "inventory"]


def test_mistyped_service_or_environment_fails(redis_url: str) -> None:
    """A mistyped service or environment is a one-line error with exit 1, not zeros."""
    Redis.from_url(redis_url).xadd(STREAM, {"data": _action()})
    result = cli("--url", redis_url, "status", "inventroy")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: no service 'inventroy' in actionbus:dev (services there: inventory). Check the "
        "name, --environment and --prefix."
    )
    result = cli("--url", redis_url, "--environment", "prdo", "status")
    assert result.returncode == 1
    assert "no services found in actionbus:prdo" in result.stderr


def test_send_prints_the_action_id_and_warns_without_a_group(redis_url: str) -> None:
    """`send` prints the action_id (not the entry id) and warns that no group reads the stream;
    `--strict` refuses and sends nothing."""
    result = cli("--url", redis_url, "send", "inventory.count", "--strict")
    assert result.returncode == 1
    assert "has no consumer group" in result.stderr
    redis = Redis.from_url(redis_url)
    assert redis.exists(STREAM) == 0
    result = cli("--url", redis_url, "send", "inventory.count")
    assert result.returncode == 0
    assert "Warning: service 'inventory' has no consumer group" in result.stderr
    sent = json.loads(redis.xrange(STREAM)[0][1][b"data"])
    assert result.stdout.strip() == sent["action_id"]


def test_status_service_lists_its_schedules(redis_url: str) -> None:
    """`status SERVICE` lists the service's periodic actions with the last tick they fired."""
    redis = Redis.from_url(redis_url)
    _backlog(redis)
    redis.hset(QM.get_schedules_key("inventory"), mapping={"nightly-count": 1796083200000})
    result = cli("--url", redis_url, "status", "inventory")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "nightly-count" in line)
    assert "2026-12-01 00:00:00" in row
    report = json.loads(cli("--url", redis_url, "status", "inventory", "--json").stdout)
    assert report["schedules"] == [{"name": "nightly-count", "last_tick_ms": 1796083200000}]
