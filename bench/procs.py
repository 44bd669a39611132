"""Start, gate, measure and stop the benchmark's child processes (see ``children.py``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from types import TracebackType

from common import CHILD_SCRIPT
from redis.asyncio import Redis

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class Child:
    """One child process running a role of ``children.py``."""

    def __init__(self, role: str, url: str, *options: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD_SCRIPT), role, "--url", url, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=CHILD_SCRIPT.parent.parent,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the child printed ``READY``; ``RuntimeError`` if it exits or hangs."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.role} (pid {self.pid}) not ready in {timeout:.0f}s")
            readable, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not readable:
                continue
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"{self.role} (pid {self.pid}) exited with code {code}")
            if line.strip() == b"READY":
                return

    def rss_mib(self) -> float:
        """Resident set size of the child, in MiB (Linux ``/proc``)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU the child used so far (Linux ``/proc``)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout``), reap; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class Children(contextlib.AbstractContextManager["Children"]):
    """Several children started together, gated by one go list, stopped on exit."""

    def __init__(self, role: str, url: str, count: int, *options: str, gated: bool) -> None:
        self.role = role
        self.go_key = f"bench:go:{uuid.uuid4().hex}" if gated else None
        gate = ("--go", self.go_key) if self.go_key else ()
        self.items: list[Child] = []
        try:
            for _ in range(count):
                self.items.append(Child(role, url, *options, *gate))
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        """Wait until every child is connected and waiting."""
        for child in self.items:
            child.wait_ready()

    async def go(self, redis: Redis) -> None:
        """Release every gated child at once."""
        assert self.go_key is not None
        await redis.lpush(self.go_key, *["1"] * len(self.items))

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by all the children together."""
        return sum(child.cpu_seconds() for child in self.items)

    def stop(self) -> list[int]:
        """Stop and reap every child; return their exit codes."""
        return [child.stop() for child in self.items]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        check_codes(self.role, self.stop())


def check_codes(role: str, codes: Sequence[int]) -> None:
    """Complain (on stderr) about children that did not exit cleanly after SIGTERM."""
    bad = [code for code in codes if code not in (0, -signal.SIGTERM)]
    if bad:
        print(f"warning: {role} children exited with {bad}", file=sys.stderr)


@contextlib.contextmanager
def started(role: str, url: str, *options: str) -> Iterator[Child]:
    """One ungated child, ready, stopped on exit."""
    child = Child(role, url, *options)
    try:
        child.wait_ready()
        yield child
    finally:
        check_codes(role, [child.stop()])


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))
