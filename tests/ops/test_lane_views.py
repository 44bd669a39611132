"""The per-lane views of ``actionbus status``, ``info`` and ``pending``, run as subprocesses."""

from __future__ import annotations

import json
import re

from redis import Redis

from actionbus import QueueManager

from .helpers import cli, lane_action, lane_backlog

QM = QueueManager("dev")
HIGH, MAIN, LOW = QM.get_lane_streams("inventory")


def _rows(stdout: str, title: str) -> list[list[str]]:
    """The body rows of the rich table printed under ``title``, as lists of cells."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def test_status_shows_each_lane_of_a_lane_service_only(redis_url: str) -> None:
    """`status` adds a "priority lanes" table: length, waiting, pending, oldest pending and
    waiting, delayed per lane of the service that uses lanes; the service row sums them; a
    service without lanes gets no lane rows; `info` and `--json` carry the same lanes."""
    redis = Redis.from_url(redis_url)
    lane_backlog(redis)
    redis.xadd(QM.get_service_action_stream("billing"), {"data": lane_action("billing.pay")})
    result = cli("--url", redis_url, "status")
    assert result.returncode == 0, result.stderr
    overview = {row[0]: row for row in _rows(result.stdout, "actionbus services in actionbus:dev")}
    assert overview["inventory"][1:3] == ["46", "2"]
    assert overview["inventory"][3] != "-"  # the high lane's pending entries' age
    assert overview["inventory"][5] == "1"  # the low lane's delayed retry
    assert overview["billing"][1:3] == ["1", "0"]
    lanes = {(row[0], row[1]): row[2:] for row in _rows(result.stdout, "priority lanes")}
    assert set(lanes) == {("inventory", "high"), ("inventory", "normal"), ("inventory", "low")}
    assert lanes["inventory", "high"][:3] == ["3", "1", "2"]
    assert lanes["inventory", "high"][3] != "-"  # its oldest pending entry's age
    assert lanes["inventory", "normal"][:4] == ["5", "5", "0", "-"]
    assert lanes["inventory", "low"][:4] == ["40", "40", "0", "-"]
    assert re.fullmatch(r"10m0\ds", lanes["inventory", "low"][4]), lanes["inventory", "low"]
    assert lanes["inventory", "low"][5] == "1"
    report = json.loads(cli("--url", redis_url, "status", "--json").stdout)
    by_service = {row["service"]: row for row in report["services"]}
    assert by_service["billing"]["lanes"] == []
    assert [(lane["lane"], lane["waiting"]) for lane in by_service["inventory"]["lanes"]] == [
        ("high", 1), ("normal", 5), ("low", 40)]
    info = json.loads(cli("--url", redis_url, "info", "inventory").stdout)
    assert (info["length"], info["waiting"], info["pending"]) == (48, 46, 2)
    assert [(lane["lane"], lane["stream"], lane["pending"]) for lane in info["lanes"]] == [
        ("high", HIGH, 2), ("normal", MAIN, 0), ("low", LOW, 0)]
    assert json.loads(cli("--url", redis_url, "info", "billing").stdout)["lanes"] == []


def test_status_without_lane_services_prints_no_lane_table(redis_url: str) -> None:
    """With no service using lanes, `status` prints today's table alone."""
    redis = Redis.from_url(redis_url)
    redis.xadd(QM.get_service_action_stream("billing"), {"data": lane_action("billing.pay")})
    result = cli("--url", redis_url, "status")
    assert result.returncode == 0, result.stderr
    assert "billing" in result.stdout
    assert "priority lanes" not in result.stdout
    assert " lane " not in cli("--url", redis_url, "status", "billing").stdout


def test_pending_entries_are_listed_and_handled_in_their_lane(redis_url: str) -> None:
    """`status SERVICE` and `pending list` name each stuck entry's lane; `pending retry` and
    `pending dead-letter` with `--lane` act on that lane (without it, the main stream)."""
    redis = Redis.from_url(redis_url)
    first, second = lane_backlog(redis)["high"]
    detail = cli("--url", redis_url, "status", "inventory").stdout
    entries = _rows(detail, "oldest pending entries")
    assert [(row[0], row[1]) for row in entries] == [(first, "high"), (second, "high")]
    [consumer] = _rows(detail, "consumers")
    assert consumer[1:4] == ["c1", "alive", "2"]
    listed = _rows(cli("--url", redis_url, "pending", "list", "inventory").stdout,
                   "2 pending entries of inventory")
    assert [(row[0], row[1], row[2]) for row in listed] == [
        (first, "high", "inventory.ask"), (second, "high", "inventory.ask")]

    refused = cli("--url", redis_url, "pending", "retry", "inventory", first)
    assert refused.returncode == 1
    assert "not pending" in refused.stderr
    retried = cli("--url", redis_url, "pending", "retry", "inventory", first, "--lane", "high")
    assert retried.returncode == 0, retried.stderr
    new_id = retried.stdout.split("-> ")[1].strip()
    assert [entry_id.decode() for entry_id, _ in redis.xrange(HIGH)][-1] == new_id
    assert redis.xpending(HIGH, "inventory")["pending"] == 1
    buried = cli("--url", redis_url, "pending", "dead-letter", "inventory", second,
                 "--lane", "high")
    assert buried.returncode == 0, buried.stderr
    [(_, letter)] = redis.xrange(QM.get_dead_letter_stream("inventory"))
    assert (letter[b"stream"].decode(), letter[b"original_id"].decode()) == (HIGH, second)
    assert redis.xpending(HIGH, "inventory")["pending"] == 0
