"""The least-privilege Redis ACL each actionbus role needs, and a check with ``ACL DRYRUN``.

Roles: ``client`` (sends actions, waits for replies), ``worker`` (consumes a service's
stream, replies, sends callbacks, dead-letters, trims), ``state`` (``RedisStateManager``),
``cli`` (the ``actionbus`` command: info, dead letters, replay, send). Every key lives under
``{prefix}:{environment}:``, so one key pattern ``~{prefix}:{environment}:*`` covers a
role; :func:`acl_setuser` writes the ``ACL SETUSER`` line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from redis.asyncio import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from actionbus.connection import AnyRedis
from actionbus.exceptions import ConfigurationError, PermissionsError
from actionbus.streams import text

__all__ = [
    "CHECK_COMMANDS",
    "CLUSTER_COMMANDS",
    "OPTIONAL_COMMANDS",
    "ROLE_COMMANDS",
    "Role",
    "acl_setuser",
    "check_permissions",
]

logger = logging.getLogger("actionbus.permissions")

Role = Literal["client", "worker", "state", "cli"]

_SCRIPTS = ("evalsha", "script|load")  # redis-py runs Lua with EVALSHA, loading on NOSCRIPT
_REPLY_WAIT = ("brpop", "rpop", "del")

ROLE_COMMANDS: dict[str, tuple[str, ...]] = {
    "client": ("ping", "xadd", *_REPLY_WAIT, "zadd", "time", *_SCRIPTS,  # zadd…: delayed sends
               "get"),  # get: the lanes descriptor of a target
    "worker": (
        "ping", "xadd", "xreadgroup", "xgroup|create", "xgroup|delconsumer", "xack",
        "xclaim", "xpending", "xlen", "xinfo|groups", "xinfo|consumers", "xtrim",
        "lpush", "expire", "get", "set", *_SCRIPTS,
        "time", "zadd", "zrange", "zrangebyscore", "zrem", "hget", "hset", "hmget",  # mover
        "hdel", "hgetall", "incrby",  # presence heartbeat and throughput counter
    ),
    "state": ("ping", "get", "set", "del", *_SCRIPTS),
    "cli": (
        "ping", "xadd", "xlen", "xinfo|groups", "xinfo|consumers", "exists", "xrange",
        "xdel", *_REPLY_WAIT,
        # status, pending and dead-letter operations (issue 9)
        "scan", "hgetall", "mget", "zcard", "zrange", "zrem", "xrevrange", "xpending", "xack",
        "multi", "exec",
        "get",  # send: the partitions descriptor of the target (issue 10)
        *_SCRIPTS,  # dead-letter replay: append and delete in one script
    ),
}  # fmt: skip
"""Commands each role needs on keys matching ``~{prefix}:{environment}:*``."""

OPTIONAL_COMMANDS: dict[str, tuple[str, ...]] = {
    "client": ("wait",),
    "worker": ("config|get", "xrange", "xdel"),
}
"""Used when granted: durable sends (``wait_replicas``: ``WAIT``), the worker's start-up
eviction-policy warning (``CONFIG GET``), and trimming past entries stuck pending
(``XRANGE``/``XDEL``; skipped without them)."""

CHECK_COMMANDS: tuple[str, ...] = ("acl|whoami", "acl|dryrun")
"""Let a user run :func:`check_permissions` on itself (optional; without them it is skipped)."""


CLUSTER_COMMANDS: tuple[str, ...] = ("cluster|slots", "command")
"""Also needed by redis-py's cluster client: the slot map and the command table."""


def acl_setuser(
    role: str,
    *,
    user: str | None = None,
    password: str = "<password>",
    prefix: str = "actionbus",
    environment: str = "dev",
    optional: bool = True,
    check: bool = True,
    cluster: bool = False,
) -> str:
    """The ``ACL SETUSER`` line granting ``role`` exactly what it needs, and nothing else.

    ``optional``/``check``/``cluster`` add ``OPTIONAL_COMMANDS``, ``CHECK_COMMANDS`` and
    ``CLUSTER_COMMANDS``. On a cluster, run the line on every node.
    """
    commands = list(_commands(role))
    if cluster:
        commands += CLUSTER_COMMANDS
    if optional:
        commands += OPTIONAL_COMMANDS.get(role, ())
    if check:
        commands += CHECK_COMMANDS
    grants = " ".join(f"+{c}" for c in commands)
    name = user or f"actionbus-{role}"
    return (
        f"ACL SETUSER {name} reset on >{password} resetchannels "
        f"~{prefix}:{environment}:* -@all {grants}"
    )


def _commands(role: str) -> tuple[str, ...]:
    try:
        return ROLE_COMMANDS[role]
    except KeyError:
        raise ConfigurationError(
            f"unknown role {role!r}: use one of {', '.join(ROLE_COMMANDS)}"
        ) from None


def _sample(command: str, key: str) -> list[str]:
    """A representative invocation of ``command`` on ``key`` (ignored by keyless ones)."""
    forms: dict[str, list[str]] = {
        "ping": ["PING"],
        "script|load": ["SCRIPT", "LOAD", "return 1"],
        "config|get": ["CONFIG", "GET", "maxmemory-policy"],
        "xadd": ["XADD", key, "*", "f", "v"],
        "xreadgroup": ["XREADGROUP", "GROUP", "g", "c", "STREAMS", key, ">"],
        "xgroup|create": ["XGROUP", "CREATE", key, "g", "$"],
        "xgroup|delconsumer": ["XGROUP", "DELCONSUMER", key, "g", "c"],
        "xack": ["XACK", key, "g", "0-1"],
        "xclaim": ["XCLAIM", key, "g", "c", "0", "0-1"],
        "xpending": ["XPENDING", key, "g"],
        "xlen": ["XLEN", key],
        "xinfo|groups": ["XINFO", "GROUPS", key],
        "xinfo|consumers": ["XINFO", "CONSUMERS", key, "g"],
        "xtrim": ["XTRIM", key, "MINID", "0"],
        "xrange": ["XRANGE", key, "-", "+"],
        "xrevrange": ["XREVRANGE", key, "+", "-"],
        "xdel": ["XDEL", key, "0-1"],
        "exists": ["EXISTS", key],
        "lpush": ["LPUSH", key, "v"],
        "expire": ["EXPIRE", key, "1"],
        "brpop": ["BRPOP", key, "1"],
        "rpop": ["RPOP", key],
        "del": ["DEL", key],
        "get": ["GET", key],
        "time": ["TIME"],
        "wait": ["WAIT", "0", "0"],
        "zadd": ["ZADD", key, "0", "m"],
        "zrange": ["ZRANGE", key, "0", "0"],
        "zrangebyscore": ["ZRANGEBYSCORE", key, "-inf", "0"],
        "zrem": ["ZREM", key, "m"],
        "hget": ["HGET", key, "f"],
        "hset": ["HSET", key, "f", "v"],
        "hmget": ["HMGET", key, "f"],
        "set": ["SET", key, "v"],
        "evalsha": ["EVALSHA", "0" * 40, "1", key],
        "hdel": ["HDEL", key, "f"],
        "hgetall": ["HGETALL", key],
        "incrby": ["INCRBY", key, "1"],
        "scan": ["SCAN", "0"],
        "mget": ["MGET", key],
        "zcard": ["ZCARD", key],
        "multi": ["MULTI"],
        "exec": ["EXEC"],
    }
    return forms[command]


_KEYLESS = frozenset(
    {"ping", "script|load", "config|get", "time", "wait", "scan", "multi", "exec"}
)


async def check_permissions(
    redis: AnyRedis,
    role: str,
    sample_keys: Iterable[str],
    *,
    user: str | None = None,
    optional: Sequence[str] | None = None,
) -> bool:
    """Check with ``ACL DRYRUN`` that ``user`` (default: this connection's) may run ``role``.

    Every keyed command is tried on every key in ``sample_keys`` (e.g. the service's stream,
    its dead-letter stream, a reply list, a state key). Raises ``PermissionsError`` naming
    each missing ``command`` (and key). Returns ``True`` when checked, ``False`` when the
    server cannot tell (Redis < 7, or the user may not run ``ACL WHOAMI``/``ACL DRYRUN``:
    grant ``+acl|whoami +acl|dryrun`` to enable the check); the reason is logged.
    ``optional`` commands (default: the role's ``OPTIONAL_COMMANDS``) are only logged.
    """
    required = _commands(role)
    extra = tuple(OPTIONAL_COMMANDS.get(role, ()) if optional is None else optional)
    keys = list(sample_keys)
    if not keys:
        raise ConfigurationError("check_permissions needs at least one sample key")
    # On a cluster every primary is asked: each node has its own ACL.
    targets: list[dict[str, Any]] = (
        [{"target_nodes": node} for node in redis.get_primaries()]
        if isinstance(redis, RedisCluster) else [{}]
    )  # fmt: skip
    name = user or ""
    denied: list[tuple[str, str | None, str]] = []
    probes = [(command, key) for command in (*required, *extra)
              for key in ([None] if command in _KEYLESS else keys)]
    try:
        for target in targets:
            name = user or text(await redis.execute_command("ACL", "WHOAMI", **target))
            replies = await _dry_runs(redis, name, probes, target)
            for (command, key), reply in zip(probes, replies, strict=True):
                if text(reply) != "OK" and (command, key) not in {d[:2] for d in denied}:
                    denied.append((command, key, text(reply)))
    except (NoPermissionError, ResponseError) as exc:
        logger.info("permissions of role %s not checked: %s (needs Redis >= 7 and "
                    "+acl|whoami +acl|dryrun)", role, exc)  # fmt: skip
        return False
    missing = [(c, k) for c, k, _ in denied if c in required]
    for command, key, reply in denied:
        if command not in required:
            logger.info("optional %s not granted to %r (%s): %s", command, name, key, reply)
    if missing:
        listed = "; ".join(f"{c} on {k}" if k else c for c, k in missing)
        grants = " ".join(f"+{c}" for c in dict.fromkeys(c for c, _ in missing))
        raise PermissionsError(
            f"Redis user {name!r} lacks what role {role!r} needs: {listed}. Grant it, e.g. "
            f"`ACL SETUSER {name} {grants}`, with key access ~<prefix>:<environment>:* "
            "(README, Security: ACL per role)",
            missing=missing,
        )
    return True


async def _dry_runs(
    redis: AnyRedis, name: str, probes: list[tuple[str, str | None]], target: dict[str, Any]
) -> list[Any]:
    """``ACL DRYRUN`` of every probe: in one pipeline (one round trip) on a single server,
    one by one on each cluster node. Raises the first refusal (e.g. ``NOPERM``)."""
    commands = [("ACL", "DRYRUN", name, *_sample(c, k or "")) for c, k in probes]
    if isinstance(redis, RedisCluster):
        return [await redis.execute_command(*args, **target) for args in commands]
    pipe = redis.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    return list(await pipe.execute())
