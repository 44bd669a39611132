"""``actionbus pending …`` and ``actionbus dead-letters …`` as subprocesses on a real Redis."""

from __future__ import annotations

import json
import uuid

from redis import Redis

from actionbus import QueueManager

from .helpers import cli

QM = QueueManager("dev")
STREAM = QM.get_service_action_stream("inventory")
DEAD = QM.get_dead_letter_stream("inventory")


def _action(action_type: str) -> str:
    return json.dumps({"action_type": action_type, "action_id": str(uuid.uuid4()), "data": {}})


def _stuck(redis: Redis) -> list[str]:
    redis.xgroup_create(STREAM, "inventory", id="$", mkstream=True)
    ids = [redis.xadd(STREAM, {"data": _action(f"inventory.t{i}")}).decode() for i in range(2)]
    redis.xreadgroup("inventory", "c1", {STREAM: ">"})
    redis.xreadgroup("inventory", "c2", {STREAM: "0"})  # c2 has nothing: no redelivery
    redis.xclaim(STREAM, "inventory", "c1", 0, [ids[1]])  # a second delivery of t1
    return ids


def test_pending_list_shows_type_consumer_and_deliveries(redis_url: str) -> None:
    """`pending list` shows each stuck entry's action type, id, consumer and deliveries."""
    ids = _stuck(Redis.from_url(redis_url))
    result = cli("--url", redis_url, "pending", "list", "inventory")
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.count("│") > 5}
    assert rows[ids[0]][0] == "inventory.t0"
    assert rows[ids[0]][2:4] == ["c1", "1"]
    assert rows[ids[1]][0] == "inventory.t1"
    assert rows[ids[1]][2:4] == ["c1", "2"]
    data = json.loads(cli("--url", redis_url, "pending", "list", "inventory", "--json").stdout)
    assert [e["deliveries"] for e in data] == [1, 2]


def test_pending_retry_and_dead_letter(redis_url: str) -> None:
    """`pending retry` re-queues an entry (acked, copied to the end); `pending dead-letter`
    buries one whole with the operator's reason; an unknown id is a clear error."""
    redis = Redis.from_url(redis_url)
    ids = _stuck(redis)
    original = redis.xrange(STREAM, ids[1], ids[1])[0][1][b"data"]
    assert cli("--url", redis_url, "pending", "retry", "inventory", ids[0]).returncode == 0
    result = cli("--url", redis_url, "pending", "dead-letter", "inventory", ids[1])
    assert result.returncode == 0, result.stderr
    assert redis.xpending(STREAM, "inventory")["pending"] == 0
    assert [json.loads(f[b"data"])["action_type"] for _, f in redis.xrange(STREAM)] == [
        "inventory.t0"]
    dead = redis.xrange(DEAD)[0][1]
    assert (dead[b"data"], dead[b"reason"], dead[b"deliveries"]) == (original, b"operator", b"2")
    result = cli("--url", redis_url, "pending", "retry", "inventory", ids[1])
    assert result.returncode == 1
    assert f"Error: {ids[1]} is not pending" in result.stderr


def _dead(redis: Redis) -> list[str]:
    return [
        redis.xadd(DEAD, {"data": _action(t), "reason": r, "error_type": "E",
                          "error_message": "m", "deliveries": "1"}).decode()
        for t, r in [("inventory.a", "rejected"), ("inventory.b", "max_deliveries"),
                     ("inventory.a", "max_deliveries")]
    ]


def test_dead_letters_list_is_a_table_json_is_not_double_encoded(redis_url: str) -> None:
    """`dead-letters list` prints a table (newest first on request); --json decodes `data`."""
    ids = _dead(Redis.from_url(redis_url))
    result = cli("--url", redis_url, "dead-letters", "list", "inventory", "--newest-first")
    order = [line.split("│")[1].strip() for line in result.stdout.splitlines()
             if line.count("│") > 5 and "-" in line.split("│")[1]]
    assert order == ids[::-1]
    data = json.loads(cli("--url", redis_url, "dead-letters", "list", "inventory",
                          "--json", "--action-type", "inventory.a").stdout)
    assert [d["data"]["action_type"] for d in data] == ["inventory.a", "inventory.a"]
    shown = json.loads(cli("--url", redis_url, "dead-letters", "show", "inventory", ids[1]).stdout)
    assert shown["data"]["action_type"] == "inventory.b"


def test_replay_by_filter_with_dry_run(redis_url: str) -> None:
    """`replay --reason` only replays matching letters; `--dry-run` changes nothing."""
    redis = Redis.from_url(redis_url)
    ids = _dead(redis)
    result = cli("--url", redis_url, "dead-letters", "replay", "inventory", "--reason",
                 "max_deliveries", "--dry-run")
    assert "dry run: 2 dead letter(s) of inventory would be replayed" in result.stdout
    assert redis.xlen(DEAD) == 3
    result = cli("--url", redis_url, "dead-letters", "replay", "inventory", "--reason",
                 "max_deliveries")
    assert result.returncode == 0, result.stderr
    assert [i.decode() for i, _ in redis.xrange(DEAD)] == [ids[0]]
    assert redis.xlen(STREAM) == 2


def test_bulk_replay_reports_a_letter_it_cannot_replay_and_goes_on(redis_url: str) -> None:
    """`replay --all` with an oversize (truncated) letter in the middle replays the letters
    after it too, names the one it left and why on stderr, and exits 1."""
    redis = Redis.from_url(redis_url)
    good = [_action("inventory.a"), _action("inventory.b")]
    redis.xadd(DEAD, {"data": good[0], "reason": "rejected"})
    kept = redis.xadd(DEAD, {"data": "{\"action_type\": \"inv", "reason": "oversize",
                             "truncated": "true", "data_length": "9000000",
                             "data_sha256": "ab" * 32}).decode()
    redis.xadd(DEAD, {"data": good[1], "reason": "rejected"})
    result = cli("--url", redis_url, "dead-letters", "replay", "inventory", "--all")
    assert result.returncode == 1, result.stderr
    assert "replayed 2 dead letter(s) into inventory's stream" in result.stdout
    assert f"not replayed: {kept}: dead letter {kept!r} kept only the first bytes" \
        in result.stderr
    assert [i.decode() for i, _ in redis.xrange(DEAD)] == [kept]
    assert [f[b"data"].decode() for _, f in redis.xrange(STREAM)] == good


def test_delete_and_purge_ask_first(redis_url: str) -> None:
    """`delete` and `purge` ask for confirmation (a 'no' keeps everything); --yes skips it."""
    redis = Redis.from_url(redis_url)
    ids = _dead(redis)
    result = cli("--url", redis_url, "dead-letters", "delete", "inventory", ids[0], input="n\n")
    assert result.returncode == 1
    assert redis.xlen(DEAD) == 3
    result = cli("--url", redis_url, "dead-letters", "delete", "inventory", ids[0], input="y\n")
    assert result.returncode == 0, result.stderr
    assert "deleted 1 dead letter(s)" in result.stdout
    result = cli("--url", redis_url, "dead-letters", "purge", "inventory", "--yes",
                 "--action-type", "inventory.a")
    assert "deleted 1 dead letter(s)" in result.stdout
    assert [i.decode() for i, _ in redis.xrange(DEAD)] == [ids[1]]
    assert cli("--url", redis_url, "dead-letters", "purge", "inventory", "--yes").returncode == 0
    assert redis.xlen(DEAD) == 0
