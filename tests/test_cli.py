"""The ``actionbus`` command against a real Redis."""

from __future__ import annotations

import json

from click.testing import CliRunner
from redis import Redis

from actionbus import QueueManager
from actionbus.cli import main

STREAM = QueueManager("dev").get_service_action_stream("inventory")
DEAD = QueueManager("dev").get_dead_letter_stream("inventory")


def _cli(redis_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--url", redis_url, "--service", "ops", *args])
    return result.exit_code, result.output


def test_send_appends_the_action_to_the_target_stream(redis_url: str) -> None:
    """`send` writes a DomainAction with the given data to the target's stream."""
    code, out = _cli(redis_url, "send", "inventory.stock.count", "--data", '{"sku": "A1"}')
    assert code == 0, out
    entries = Redis.from_url(redis_url).xrange(STREAM)
    action = json.loads(entries[0][1][b"data"])
    assert action["action_type"] == "inventory.stock.count"
    assert action["data"] == {"sku": "A1"}
    assert action["origin_service"] == "ops"


def test_send_rejects_bad_json_data(redis_url: str) -> None:
    """`send` with --data that is not JSON fails with a usage error and sends nothing."""
    code, out = _cli(redis_url, "send", "inventory.stock.count", "--data", "{nope")
    assert code == 2
    assert "Invalid value" in out
    assert Redis.from_url(redis_url).exists(STREAM) == 0


def test_send_wait_reports_no_reply(redis_url: str) -> None:
    """`send --wait` without a worker fails after the wait with a clear message."""
    code, out = _cli(redis_url, "send", "inventory.stock.count", "--wait", "0.2")
    assert code == 1
    assert "no reply within 0.2s" in out


def test_info_describes_stream_groups_and_dead_letters(redis_url: str) -> None:
    """`info` reports length, groups with pending counts, consumers and dead letters."""
    redis = Redis.from_url(redis_url)
    redis.xadd(STREAM, {"data": "{}"})
    redis.xgroup_create(STREAM, "inventory", id="0")
    redis.xreadgroup("inventory", "c1", {STREAM: ">"})
    redis.xadd(DEAD, {"data": "{}", "reason": "malformed"})
    code, out = _cli(redis_url, "info", "inventory")
    assert code == 0, out
    report = json.loads(out)
    assert report["length"] == 1
    assert report["groups"][0]["pending"] == 1
    assert report["groups"][0]["consumers"][0]["name"] == "c1"
    assert report["dead_letters"] == 1


def test_info_of_an_unknown_service_is_an_error(redis_url: str) -> None:
    """`info` on a service with no keys (a typo) exits 1 naming the services that exist."""
    Redis.from_url(redis_url).xadd(STREAM, {"data": "{}"})
    code, out = _cli(redis_url, "info", "nobody")
    assert code == 1, out
    assert "no service 'nobody' in actionbus:dev (services there: inventory)" in out


def test_dead_letters_list_and_replay(redis_url: str) -> None:
    """`dead-letters list` prints entries; `replay --all` moves them back to the stream."""
    redis = Redis.from_url(redis_url)
    redis.xadd(DEAD, {"data": '{"action_type": "inventory.a.b"}', "reason": "rejected",
                      "deliveries": "1"})
    code, out = _cli(redis_url, "dead-letters", "list", "inventory", "--json")
    assert code == 0, out
    assert json.loads(out)[0]["reason"] == "rejected"
    code, out = _cli(redis_url, "dead-letters", "replay", "inventory", "--all")
    assert code == 0, out
    assert "replayed 1" in out
    assert redis.xlen(DEAD) == 0
    assert redis.xrange(STREAM)[0][1][b"data"] == b'{"action_type": "inventory.a.b"}'


def test_replay_needs_ids_or_all(redis_url: str) -> None:
    """`dead-letters replay` with neither ids nor --all is a usage error."""
    code, out = _cli(redis_url, "dead-letters", "replay", "inventory")
    assert code == 2
    assert "--all" in out


def test_invalid_service_name_is_a_clear_error(redis_url: str) -> None:
    """A service name that could forge a key is refused with the reason."""
    code, out = _cli(redis_url, "info", "bad:name")
    assert code != 0
    assert "not allowed" in out


def test_worker_rejects_a_bad_target() -> None:
    """`worker` with a target that is not MODULE:ATTRIBUTE is a usage error."""
    result = CliRunner().invoke(main, ["worker", "no_colon"])
    assert result.exit_code == 2
    assert "MODULE:ATTRIBUTE" in result.output
