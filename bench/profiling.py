"""Profile the consumer side (and the caller) of the drain and pseudo-sync scenarios.

Not part of ``make bench``; needs ``.venv/bin/pip install py-spy pyinstrument``::

    .venv/bin/python bench/profiling.py drain --side actionbus   # or --side raw
    .venv/bin/python bench/profiling.py rpc --side actionbus     # or --side raw
    .venv/bin/python bench/profiling.py drain --tool py-spy      # sample from outside

It starts its own redis-server and runs the consumer/responder process of
``children.py``. With ``--tool pyinstrument`` (default) the child profiles itself from
the go signal to SIGTERM and writes a call tree plus flat self/total lists; with
``--tool py-spy`` py-spy is attached to the child (under uvloop its stacks are often
mis-parented, so prefer pyinstrument for attribution). For ``rpc`` the caller (this
process) also runs under pyinstrument. Reports go to ``bench/results/profiles/``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from common import RESULTS_DIR, quiet_logging, run, wait_until
from procs import Child
from redis.asyncio import Redis
from scenarios_drain import AB_STREAM, RAW_STREAM, TARGET, action_payloads, drained
from scenarios_drain import GROUP as DRAIN_GROUP
from scenarios_rpc import GROUP as RPC_GROUP
from scenarios_rpc import RAW_STREAM as RPC_RAW_STREAM
from scenarios_rpc import TARGET as RPC_TARGET
from scenarios_rpc import ab_caller, concurrent, raw_caller, sequential

from actionbus.embedded import RedisServer

OUT_DIR = RESULTS_DIR / "profiles"
PY_SPY = Path(sys.executable).parent / "py-spy"
TOP = 30


@contextlib.contextmanager
def py_spy(pid: int | None, out: Path, rate: int) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs (no-op for ``None``)."""
    if pid is None:
        yield
        return
    proc = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def short(frame: str) -> str:
    """``function (path:line)`` -> ``function (shorter path)`` without the line."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarize_py_spy(path: Path, top: int = TOP) -> str:
    """Inclusive and self sample shares per function from py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{path.name}: {total} samples (CPU only)", "  inclusive:"]
    lines += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def summarize_pyinstrument(path: Path, top: int = TOP) -> str:
    """The head of the flat self and total lists the child wrote."""
    parts = []
    for mode in ("self", "total"):
        lines = Path(f"{path}.{mode}").read_text().splitlines()
        parts.append(f"--- {path.name} ({mode} time)\n" + "\n".join(lines[: top + 6]))
    return "\n".join(parts)


COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ack and replies (output batcher)", ("workers/output.py",)),
    ("decode/validate", ("models/actions.py", "pydantic", "_decode", "_check_size", "_admit",
                         "json/", "<genexpr>  actionbus/workers/processing.py")),
    ("Redis I/O (redis-py, socket)", ("redis/", "actionbus/pool.py", "actionbus/connection",
                                      "asyncio/streams.py", "hiredis")),
    ("handler and pipeline layers", ("workers/pipeline.py", "workers/results.py",
                                     "workers/routing.py", "bench/children.py", "noop")),
    ("scheduling (event loop, eager runner, read loop)", (
        "asyncio/", "workers/eager.py", "workers/base_worker.py", "workers/reader.py",
        "workers/supervisor.py", "<built-in>", "uvloop")),
    ("processing bookkeeping", ("workers/processing.py", "workers/policy.py")),
)


def components(path: Path, n: int) -> str:
    """Self time per component of the consume path, from the flat self-time list, as
    shares and as CPU µs per action (the profile's CPU time split by those shares)."""
    shares: Counter[str] = Counter()
    text = Path(f"{path}.self").read_text()
    cpu = float(text.split("CPU time:", 1)[1].split()[0]) if "CPU time:" in text else 0.0
    for line in text.splitlines():
        head, _, rest = line.strip().partition("% ")
        try:
            share = float(head)
        except ValueError:
            continue
        name = next((n for n, marks in COMPONENTS if any(m in rest for m in marks)), "other")
        shares[name] += share
    total = sum(shares.values()) or 1.0
    out = [f"{path.name}: self time per component ({cpu:.2f}s CPU for {n:,} actions = "
           f"{cpu / n * 1e6:.1f} µs/action, profiler overhead included)"]
    out += [f"  {share / total:6.1%}  {cpu / n * 1e6 * share / total:5.1f} µs  {name}"
            for name, share in shares.most_common()]
    text = "\n".join(out)
    Path(f"{path}.components").write_text(text + "\n")
    return text


def child_options(tool: str, out: Path) -> tuple[str, ...]:
    return ("--profile", str(out)) if tool == "pyinstrument" else ()


async def profile_drain(url: str, side: str, n: int, tool: str, rate: int) -> Path:
    """Drain ``n`` pre-loaded entries with one consumer process, profiled."""
    out = OUT_DIR / f"drain-{side}.{'txt' if tool == 'pyinstrument' else 'py-spy.txt'}"
    options: tuple[str, ...]
    if side == "actionbus":
        role, stream, options = "ab-worker", AB_STREAM, ("--service", TARGET)
    else:
        role, stream = "raw-drain", RAW_STREAM
        options = ("--stream", stream, "--group", DRAIN_GROUP)
    async with Redis.from_url(url) as admin:
        await admin.xgroup_create(stream, DRAIN_GROUP, id="0", mkstream=True)
        payloads = action_payloads(n)
        for first in range(0, n, 1000):
            pipe = admin.pipeline(transaction=False)
            for payload in payloads[first:first + 1000]:
                pipe.xadd(stream, {"data": payload})
            await pipe.execute()
        go = "bench:go:profile"
        child = Child(role, url, *options, "--go", go, *child_options(tool, out))
        try:
            child.wait_ready()
            with py_spy(child.pid if tool == "py-spy" else None, out, rate):
                start = time.perf_counter()
                await admin.lpush(go, "1")
                await wait_until(lambda: drained(admin, stream, n), timeout=300,
                                 interval=0.01, what="drain")
                print(f"drained {n} in {time.perf_counter() - start:.2f}s ({side})")
        finally:
            child.stop()
    return out


async def profile_rpc(url: str, side: str, calls: int, tool: str, rate: int) -> Path:
    """Sequential then 50-caller request/reply; the responder and the caller profiled."""
    from pyinstrument import Profiler

    out = OUT_DIR / f"rpc-responder-{side}.{'txt' if tool == 'pyinstrument' else 'py-spy.txt'}"
    if side == "actionbus":
        responder = Child("ab-worker", url, "--service", RPC_TARGET, *child_options(tool, out))
        caller = ab_caller(url, RPC_TARGET)
    else:
        responder = Child("raw-responder", url, "--stream", RPC_RAW_STREAM, "--group", RPC_GROUP,
                          *child_options(tool, out))
        caller = raw_caller(url)
    try:
        responder.wait_ready()
        async with caller as call:
            await sequential(call, 100)
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            with py_spy(responder.pid if tool == "py-spy" else None, out, rate):
                profiler.start()
                _, seq_s = await sequential(call, calls)
                _, conc_s = await concurrent(call, 50, calls // 50)
                profiler.stop()
            print(f"{side}: {calls} sequential in {seq_s:.2f}s ({calls / seq_s:,.0f}/s), "
                  f"{calls} by 50 callers in {conc_s:.2f}s ({calls / conc_s:,.0f}/s)")
            caller_out = OUT_DIR / f"rpc-caller-{side}.txt"
            caller_out.write_text(profiler.output_text(show_all=False))
            print(f"caller call tree (pyinstrument): {caller_out}")
    finally:
        responder.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["drain", "rpc"])
    parser.add_argument("--side", choices=["actionbus", "raw"], default="actionbus")
    parser.add_argument("--tool", choices=["pyinstrument", "py-spy"], default="pyinstrument")
    parser.add_argument("--n", type=int, help="drain: entries (100,000); rpc: calls (5,000)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    args = parser.parse_args()
    if args.tool == "py-spy" and not PY_SPY.exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    quiet_logging()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with RedisServer() as server:
        if args.what == "drain":
            out = run(profile_drain(server.url, args.side, args.n or 100_000, args.tool,
                                    args.rate))
        else:
            out = run(profile_rpc(server.url, args.side, args.n or 5_000, args.tool, args.rate))
    if args.tool == "py-spy":
        print(summarize_py_spy(out))
    else:
        print(summarize_pyinstrument(out))
        if args.what == "drain":
            print(components(out, args.n or 100_000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
