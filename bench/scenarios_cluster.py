"""Scenario 9: one service drained on a 3-master Redis Cluster with partitions = 1, 2, 3,
unordered and ordered (ordering keys).

Each measurement: start 2 ``ab-worker`` processes (``--cluster --partitions P``), pre-load N
actions spread evenly over the P partition streams (or, ordered, over the ordered streams
by ``crc32(key) % P`` for 1,000 keys), release the workers and time until every stream's
group has read everything and has nothing pending. Reported: actions/s, the workers' CPU
µs per action, every master's CPU µs per action (``/proc``) and the busiest master's. The
raw side (P = 1 only: a raw consumer reads one stream) is one raw-drain process.

On a 2-core machine every master, both workers and this process share two cores, so the
throughput is CPU-bound and barely moves with P: the per-master and per-worker CPU figures
are what a deployment on N machines would scale with (README "Scaling out" has the paper
estimate).
"""

from __future__ import annotations

import os
import time

from common import DATA, ORIGIN, Config, alternate, field, to_int, wait_until
from procs import Children
from redis.asyncio import RedisCluster
from report import Results

from actionbus import DomainAction, QueueManager
from actionbus.embedded import RedisCluster as EmbeddedCluster
from actionbus.partitions import partition_for_key

TARGET = "benchpart"
GROUP = TARGET
KEYS = 1_000
WORKERS = 2
QM = QueueManager()
RAW_STREAM = "bench:{cluster}:raw"


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def layout(partitions: int, n: int, ordered: bool) -> dict[str, list[str]]:
    """Stream -> the action JSONs pre-loaded into it."""
    out: dict[str, list[str]] = {}
    for i in range(n):
        key = f"key-{i % KEYS}" if ordered else None
        action = DomainAction(action_type=f"{TARGET}.item.process", origin_service=ORIGIN,
                              data=DATA, ordering_key=key)
        if key is not None:
            stream = QM.get_ordered_stream(TARGET, partition_for_key(key, partitions))
        else:
            stream = QM.get_partition_stream(TARGET, i % partitions)
        out.setdefault(stream, []).append(action.model_dump_json(exclude_none=True))
    return out


async def preload(admin: RedisCluster, streams: dict[str, list[str]]) -> None:
    """XADD everything, pipelined per node by the cluster client."""
    for stream, payloads in streams.items():
        for start in range(0, len(payloads), 1_000):
            pipe = admin.pipeline()
            for payload in payloads[start:start + 1_000]:
                pipe.xadd(stream, {"data": payload})
            await pipe.execute()


async def drained(admin: RedisCluster, streams: dict[str, list[str]]) -> bool:
    """Every stream's group has read all its entries and has nothing pending."""
    for stream, payloads in streams.items():
        groups = await admin.xinfo_groups(stream)
        info = next((g for g in groups if field(g, "name") in (GROUP, GROUP.encode())), None)
        if info is None or to_int(field(info, "entries-read")) < len(payloads) \
                or to_int(field(info, "pending")):
            return False
    return True


async def clean(admin: RedisCluster) -> None:
    """Delete the service's streams, delayed sets, descriptor and leases (all partitions)."""
    keys = [RAW_STREAM, QM.get_partitions_key(TARGET)]
    for k in range(3):
        keys += [QM.get_partition_stream(TARGET, k), QM.get_ordered_stream(TARGET, k),
                 QM.get_delayed_set(TARGET, partition=k), QM.get_ordering_lease_key(TARGET, k)]
    for key in keys:
        await admin.delete(key)


async def drain_once(
    cfg: Config, cluster: EmbeddedCluster, admin: RedisCluster, side: str, partitions: int,
    ordered: bool, n: int,
) -> dict[str, float]:
    """One timed drain; returns msg/s and CPU µs per action (workers, masters, busiest)."""
    await clean(admin)
    if side == "raw":
        streams = {RAW_STREAM: layout(1, n, False)[QM.get_service_action_stream(TARGET)]}
        await admin.xgroup_create(RAW_STREAM, GROUP, id="0", mkstream=True)
        role, options = "raw-drain", ("--stream", RAW_STREAM, "--group", GROUP, "--cluster")
        count = 1
    else:
        streams = layout(partitions, n, ordered)
        for stream in streams:
            await admin.xgroup_create(stream, GROUP, id="0", mkstream=True)
        role = "ab-worker"
        options = ("--service", TARGET, "--cluster", "--partitions", str(partitions))
        count = WORKERS
    pids = [node.pid for node in cluster.nodes if node.pid is not None]
    with Children(role, cluster.url, count, *options, gated=True) as children:
        await preload(admin, streams)
        children.wait_ready()
        before = children.cpu_seconds(), [cpu_of(pid) for pid in pids]
        start = time.perf_counter()
        await children.go(admin)  # type: ignore[arg-type]  # lpush works on a cluster
        await wait_until(lambda: drained(admin, streams), timeout=max(60.0, n / 200),
                         interval=0.01, what=f"{side} drain, partitions={partitions}")
        elapsed = time.perf_counter() - start
        workers = children.cpu_seconds() - before[0]
        masters = [cpu_of(pid) - was for pid, was in zip(pids, before[1], strict=True)]
    await clean(admin)
    return {"rate": n / elapsed, "worker": workers / n * 1e6,
            "redis": sum(masters) / n * 1e6, "busiest": max(masters) / n * 1e6}


async def run_cluster(cfg: Config, results: Results) -> None:
    """Partitions 1, 2, 3 unordered, 3 ordered, and raw, on a 3-master cluster."""
    cluster = EmbeddedCluster(masters=3).start()
    admin = RedisCluster.from_url(cluster.url)
    n = cfg.drain_n
    plan = [("raw", 1, False), ("actionbus", 1, False), ("actionbus", 2, False),
            ("actionbus", 3, False), ("actionbus", 3, True)]
    try:
        for rep in range(cfg.reps):
            for side, partitions, ordered in alternate(plan, rep):
                figures = await drain_once(cfg, cluster, admin, side, partitions, ordered, n)
                what = "ordered (1,000 keys)" if ordered else "unordered"
                key = f"cluster.p{partitions}{'.ordered' if ordered else ''}"
                label = f"cluster drain, partitions={partitions}, {what}"
                if side == "raw":  # the baseline of the partitions=1 row
                    key, label = "cluster.p1", "cluster drain, partitions=1, unordered"
                results.add(9, key, f"{label} ({WORKERS} workers)", "msg/s", side,
                            figures["rate"])
                results.add(9, f"{key}.wcpu", f"{label}: worker CPU per action", "µs", side,
                            figures["worker"])
                results.add(9, f"{key}.rcpu", f"{label}: Redis CPU per action (3 masters)",
                            "µs", side, figures["redis"])
                results.add(9, f"{key}.bcpu", f"{label}: busiest master CPU per action", "µs",
                            side, figures["busiest"])
        results.note("cluster_drain_n", n)
    finally:
        await admin.aclose()
        cluster.cleanup()
