"""Failover under load on a 3-master + 3-replica cluster (AOF, appendfsync everysec)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from actionbus.embedded import RedisCluster

from .cluster_load import STREAM, Load, move_default_node, until


async def test_failover_of_the_busy_master_under_load(
    redis_replica_cluster: RedisCluster,
) -> None:
    """kill -9 of the master holding the busy service's slot — also made the default node
    of every worker's client — while producers, a pseudo-sync caller and two workers run.
    Its replica is frozen for the last second before the kill, so the writes of that
    second exist only on the killed master: plain sends acknowledged then vanish from the
    stream, while those with wait_replicas=1 were not acknowledged (NotReplicatedError):
    no acknowledged durable entry is missing or unhandled.
    Plain sends and handling resume in the same processes after the failover, sends with
    wait_replicas=1 once the old master rejoined as the new master's replica."""
    cluster = redis_replica_cluster
    load = Load(cluster.url)
    killed_at = time.monotonic()
    try:
        await load.start()
        master = cluster.master_of(STREAM)
        for worker in load.workers:  # worst case: the slot owner is the default node too
            move_default_node(worker.redis_client, master.port)
        await until(lambda: len(load.handled) >= 50, 20, "traffic before the kill")
        replica = next(n for n in cluster.nodes if n is not master and n.running
                       and cluster.role_of(n) == "slave" and _replicates(n, master.port))
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGSTOP)  # the last second reaches the master only
        try:
            await asyncio.sleep(1.0)
            killed_at = time.monotonic()
            cluster.kill(master)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_failover, STREAM, master, 30)
        await until(lambda: load.resumed("plain", killed_at) is not None, 30,
                     "plain sends to resume")
        await asyncio.to_thread(cluster.rejoin, master)  # the new master gets a replica
        await until(lambda: load.resumed("durable", killed_at) is not None, 30,
                     "sends with wait_replicas=1 to resume")
        await until(lambda: load.first_handled_after(killed_at + 0.1) is not None and
                     load.first_handled_after(time.monotonic()) is None and
                     len([i for i, at in load.sent_at.items() if at > killed_at
                          and i in load.handled]) >= 50, 30, "handling to resume")
        await load.stop_producing()
        await load.wait_handled(20)
        missing = await load.missing()
        print("\n" + load.report("failover of the busy master", killed_at)
              + f"; acknowledged entries missing from the stream after the failover: {missing}")
        assert missing["durable"] == 0
        assert not load.lost("durable")
        assert missing["plain"] > 0  # the positive control: without WAIT they were lost
        assert all(worker.failed is None for worker in load.workers)
    except BaseException:
        print("\n" + load.report("failover (failed)", killed_at))
        raise
    finally:
        await load.close()


def _replicates(node: object, port: int) -> bool:
    with node.client() as conn:  # type: ignore[attr-defined]
        return int(conn.info("replication")["master_port"]) == port
