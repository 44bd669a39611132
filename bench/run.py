"""actionbus benchmark: actionbus vs raw redis-py vs FastStream, on a Redis of its own.

How to run (from the repository root)::

    make bench                              # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick   # smaller N, one repetition: a smoke run
    .venv/bin/python bench/run.py --scenario 3 [--scenario 4]
    make bench-long                         # adds scenario 5 (1,000,000 actions)

It starts its own ``redis-server`` on a free loopback port (never the shared 6379), runs
every scenario against it, stops it, prints one table and writes the same figures to
``bench/results/latest.json``. Every process (this one and the consumer/responder
processes it starts) runs uvloop; library and broker logging are at WARNING.

Scenarios:

1. Send: ``send_action_async`` one by one and ``send_actions_async`` in batches of 100
   vs raw XADD of the same JSON (built with ``json.dumps`` per message) one by one and
   in pipelines of 100, vs FastStream ``broker.publish(..., stream=...)`` one by one.
2. Drain: N entries pre-loaded, then timed until the consumer group has read and
   acknowledged all of them; no-op handlers; 1 and 2 consumer processes. Raw: a loop of
   XREADGROUP COUNT 100 + ``json.loads`` + one XACK per batch. FastStream: a
   consumer-group stream subscriber (``max_records=100``, logging off, group created
   before publishing). FastStream drains fewer entries (it is ~20x slower). N is 100,000
   (20,000 before the fifth round): the raw loop connects and joins the group before the go
   signal, the worker only starts (connections, ACL check, group, partition probe: about
   15-25 ms of CPU per process) after it, so a small N charged that start-up to each
   action (about 1 µs of CPU per action at 20,000).
3. Request/reply against a responder process: sequential calls (p50, p99) and 50
   concurrent callers (throughput, p50, p99). Raw: XADD + BRPOP on a unique list; the
   responder pipelines LPUSH replies and one XACK per batch. FastStream:
   ``broker.request(...)`` (pool of 256 connections) to a subscriber that answers.
4. 1,000 concurrent ``send_action_pseudo_sync`` calls from one client with
   ``redis_max_connections=20``: timeouts, errors, total time.
5. ``--long`` only: worker RSS and stream length at 100k and 1M actions (200k with
   ``--quick``) with ``stream_retention=100_000``; the targets need RSS growth < 10%
   and, after the worker's next maintenance round, a stream within its retention.
6. Delayed: ``send_action_async(delay=)`` one by one vs plain ``send_action_async`` (shown
   in the raw column, so ab/raw is delayed/plain); then 10,000 due per second for 3 s (1 s
   with ``--quick``) loaded into a delayed set and moved by one worker's mover: lateness
   (moved-at minus due-at, by Redis' clock) p50 and p99.
7. Head-of-line (``scenarios_lanes.py``): pseudo-sync behind a 50,000-action backlog
   (10,000 with ``--quick``), first call and 20 more, raw vs actionbus without and with lanes.
8. Sequential pseudo-sync while a producer process adds 10k or 25k fire-and-forget/s to
   the same service, against idle; raw vs actionbus without and with lanes.
9. Partitions (``scenarios_cluster.py``): on a 3-master cluster started for it, N actions
   of one service drained by 2 worker processes with partitions = 1, 2, 3 (unordered) and
   3 (ordered, 1,000 keys); msg/s, worker CPU and every master's CPU per action; raw:
   one raw consumer of one stream.

Scenario 2 also reports each consumer's CPU µs per action (``/proc``), a drain by a
worker reading priority lanes, and where the 1-process drain's CPU per action goes, per
component (``bench/breakdown.py``: each part of the consume path timed on its own, the
rest of the measured total being Redis I/O and the event loop), printed and written to
``bench/results/drain-breakdown.txt`` and the JSON's notes.

Reading the table: each cell is the median of the repetitions (3 by default, 1 with
``--quick``) with (min-max); ``ab/raw`` and ``ab/FS`` divide
actionbus's median by the other side's. Higher is better for msg/s and req/s, lower for
ms. Within each repetition the sides run one after another, in reversed order on every
other repetition, so ratios hold up on a noisy machine while absolute figures drift
between runs. The targets below the table are judged on those ratios (scenario 4 and 5
targets on actionbus's worst repetition).

``bench/profiling.py`` (not run by ``make bench``) profiles the drain and request/reply
consumers with pyinstrument or py-spy.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from breakdown import render
from common import RESULTS_DIR, Config, quiet_logging, run
from procs import cpu_count
from redis.asyncio import Redis
from report import Results, table, write_json
from scenarios_cluster import run_cluster
from scenarios_delayed import run_delayed
from scenarios_drain import run_drain
from scenarios_lanes import run_hol, run_load
from scenarios_long import run_long
from scenarios_rpc import run_burst, run_rpc
from scenarios_send import run_send

from actionbus.embedded import RedisServer

Scenario = Callable[[Config, Results], Awaitable[None]]

SCENARIOS: dict[int, tuple[str, Scenario]] = {
    1: ("send", run_send),
    2: ("worker drain", run_drain),
    3: ("pseudo-sync round trip", run_rpc),
    4: ("1,000 concurrent pseudo-sync calls", run_burst),
    5: ("1M actions: worker RSS and stream length", run_long),
    6: ("delayed sends and mover lateness", run_delayed),
    7: ("head-of-line: pseudo-sync behind a backlog, with and without lanes", run_hol),
    8: ("pseudo-sync under 10k and 25k fire-and-forget/s, with and without lanes", run_load),
    9: ("one service on a 3-master cluster: partitions 1, 2, 3, ordered", run_cluster),
}
DEFAULT_SCENARIOS = (1, 2, 3, 4, 6, 7, 8, 9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark actionbus against raw redis-py and FastStream.",
        epilog="See the module docstring of bench/run.py for what each scenario measures.",
    )
    parser.add_argument("--quick", action="store_true", help="small N, one repetition")
    parser.add_argument("--long", action="store_true", help="also run scenario 5 (1M actions)")
    parser.add_argument("--scenario", type=int, action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json",
                        help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


async def server_version(url: str) -> str:
    async with Redis.from_url(url) as redis:
        info: dict[str, Any] = await redis.info("server")
        return str(info.get("redis_version"))


async def run_all(config: Config, chosen: list[int], results: Results) -> dict[str, float]:
    """Run ``chosen`` scenarios in order; return the seconds each took."""
    durations: dict[str, float] = {}
    for number in chosen:
        name, scenario = SCENARIOS[number]
        print(f"scenario {number}: {name} ...", flush=True)
        start = time.perf_counter()
        await scenario(config, results)
        durations[str(number)] = round(time.perf_counter() - start, 1)
        print(f"scenario {number}: done in {durations[str(number)]:.1f}s", flush=True)
    return durations


def meta(url: str, config: Config, chosen: list[int], redis_version: str) -> dict[str, Any]:
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "scenarios": chosen,
        "reps": config.reps,
        "quick": config.quick,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": cpu_count(),
        "redis_server": redis_version,
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "faststream": version("faststream"),
        "uvloop": version("uvloop"),
        "pydantic": version("pydantic"),
        "actionbus": version("actionbus"),
        "redis_url": url,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if find_spec("faststream") is None:
        sys.exit("FastStream is missing: .venv/bin/pip install -e '.[bench]' (or: make bench)")
    quiet_logging()
    chosen = sorted(set(args.scenario or (*DEFAULT_SCENARIOS, *((5,) if args.long else ()))))
    wall_start = time.perf_counter()
    server = RedisServer().start()
    try:
        config = Config.make(server.url, quick=args.quick, reps=args.reps)
        redis_version = run(server_version(server.url))
        print(f"redis-server {redis_version} on {server.url}; scenarios {chosen}; "
              f"{config.reps} repetition(s)"
              f"{'; quick' if config.quick else ''}", flush=True)
        results = Results()
        durations = run(run_all(config, chosen, results))
        results.note("scenario_seconds", durations)
        info = meta(server.url, config, chosen, redis_version)
    finally:
        server.cleanup()
    wall = time.perf_counter() - wall_start
    print()
    print(table(results))
    if "drain_breakdown_us" in results.notes:
        print("\nScenario 2, where the CPU per drained action goes (bench/breakdown.py):")
        print(render(results.notes["drain_breakdown_us"]))
    print(f"\nwall time {wall:.1f}s; JSON written to {args.json}")
    write_json(results.to_json(round(wall, 1), info), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
