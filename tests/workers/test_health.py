"""Health (workers/health.py, failures.describe): refusals counted by ``COMMAND: CODE``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoPermissionError, ResponseError

from actionbus.workers.failures import describe
from actionbus.workers.health import Health, SlowCommands


@pytest_asyncio.fixture
async def refusals(redis_url: str) -> AsyncIterator[dict[str, BaseException]]:
    """Real errors from the test server: WRONGTYPE, an unknown command and NOPERM."""
    name = f"nolpush-{uuid.uuid4().hex[:6]}"
    admin = Redis.from_url(redis_url)
    await admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all",
                                "-lpush")
    user = Redis.from_url(redis_url.replace("redis://", f"redis://{name}:pw@", 1))
    errors: dict[str, BaseException] = {}
    try:
        await admin.set("a-string", "x")
        for what, call in (("wrongtype", admin.lpush("a-string", "v")),
                           ("unknown", admin.execute_command("NOSUCHCOMMAND")),
                           ("noperm", user.lpush("a-list", "v"))):
            try:
                await call
            except ResponseError as exc:
                errors[what] = exc
        yield errors
    finally:
        await user.aclose()
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


async def test_refusals_are_counted_by_command_and_code_and_logged_once(
    refusals: dict[str, BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """``refused`` counts by ``COMMAND: CODE`` (the Redis code, else the error's type), each
    kind gives one problem line and one log line, and the worker is unhealthy."""
    wrongtype, unknown, noperm = refusals["wrongtype"], refusals["unknown"], refusals["noperm"]
    assert isinstance(noperm, NoPermissionError)
    caplog.set_level(logging.ERROR, "actionbus.worker")
    health = Health(logging.getLogger("actionbus.worker"), "output S")
    health.refused("LPUSH k1", wrongtype)
    health.refused("LPUSH k2", wrongtype)
    health.refused("XACK s1, s2", unknown)
    health.refused("XADD dead", noperm)
    status = health.status()
    assert status.refused == {"LPUSH: WRONGTYPE": 2, "XACK: ResponseError": 1,
                              "XADD: NOPERM": 1}
    assert status.problems == [
        f"Redis refused LPUSH k1: ResponseError: {wrongtype}",
        f"Redis refused XACK s1, s2: ResponseError: {unknown}",
        f"Redis refused XADD dead: missing ACL permission: {noperm}",
    ]
    assert not status.healthy
    assert [r.getMessage() for r in caplog.records] == [
        f"output S: {line} — not an outage, so not retried; the worker is now unhealthy "
        "(fix the ACL / key type; later refusals of this kind are only counted)"
        for line in status.problems
    ]


@pytest.mark.parametrize(("exc", "described"), [
    (ResponseError("NOPERM this user has no permissions to run the 'xadd' command"),
     "missing ACL permission: NOPERM this user has no permissions to run the 'xadd' command"),
    (ResponseError("WRONGTYPE Operation against a key"),
     "ResponseError: WRONGTYPE Operation against a key"),
    (ConnectionError(), "ConnectionError: ConnectionError"),
])
def test_describe_names_what_was_refused(exc: BaseException, described: str) -> None:
    """describe(): a NOPERM error text (whatever its class) reads "missing ACL permission";
    others give their type and text, or their type alone when they have no text."""
    assert describe(exc) == described


def test_status_reports_a_dead_loop_outage_and_slow_commands() -> None:
    """A fresh Health is healthy with nothing failed; a loop death makes it unhealthy with
    ``failed`` and a "stopped:" problem (the first death wins); in_outage and
    slow_commands are reported as given."""
    health = Health(logging.getLogger("actionbus.worker"), "w")
    fresh = health.status()
    assert (fresh.healthy, fresh.in_outage, fresh.failed, fresh.problems) == (
        True, False, None, [])
    health.died(RuntimeError("boom"))
    health.died(ValueError("later"))
    health.slow_commands = 2
    status = health.status(in_outage=True)
    assert (status.healthy, status.in_outage, status.failed, status.slow_commands) == (
        False, True, "RuntimeError: boom", 2)
    assert status.problems == ["stopped: RuntimeError: boom"]


def test_slow_commands_count_only_commands_over_the_threshold_into_health() -> None:
    """SlowCommands counts a command that took longer than its threshold (not one that took
    exactly the threshold), keeps the longest, and adds each to the worker's health."""
    health = Health(logging.getLogger("actionbus.worker"), "w")
    slow = SlowCommands(health, threshold=5.0)
    assert (slow.health, slow.threshold, slow.count, slow.longest) == (health, 5.0, 0, 0.0)
    slow.check("XREADGROUP", 5.0)
    slow.check("XREADGROUP", 7.5)
    slow.check("XACK", 6.0)
    assert (slow.count, slow.longest) == (2, 7.5)
    assert health.status().slow_commands == 2


def test_slow_commands_without_health_only_count(caplog: pytest.LogCaptureFixture) -> None:
    """Without a Health, SlowCommands still counts and logs a slow command, naming the
    command, its duration and the threshold."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    slow = SlowCommands(None, threshold=2.0)
    slow.check("XAUTOCLAIM", 3.25)
    assert slow.count == 1
    assert [r.message for r in caplog.records] == [
        "Redis slow/unavailable for 3.2s (XAUTOCLAIM took longer than the socket timeout of "
        "2.0s; redis-py retried inside it)"]


def test_a_fresh_health_has_nothing_to_report() -> None:
    """A new Health has no refusals, no failure and no slow commands, and keeps its logger
    and label."""
    logger = logging.getLogger("actionbus.worker")
    health = Health(logger, "worker w")
    assert (health.logger, health.what, health.refusals, health.failed,
            health.slow_commands) == (logger, "worker w", {}, None, 0)
    assert health.status().refused == {}
