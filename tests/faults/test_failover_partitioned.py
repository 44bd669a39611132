"""Failover under load of a partitioned service (3 partitions on a 3-master + 3-replica
cluster, AOF everysec): the master holding one partition is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from actionbus.clients import QueueManager
from actionbus.embedded import RedisCluster

from .cluster_load import SERVICE, Load, until
from .test_failover import _replicates


async def test_failover_of_a_partitions_master_under_load(
    redis_replica_cluster: RedisCluster,
) -> None:
    """kill -9 of the master holding partition 0 of a 3-partition service while producers,
    a pseudo-sync caller and two workers run, its replica frozen for the last second:
    the other partitions keep being sent to and handled; once the replica took over, sends
    and handling resume in the same processes; no acknowledged send with wait_replicas=1 is
    missing or unhandled."""
    cluster = redis_replica_cluster
    load = Load(cluster.url, partitions=3)
    killed_at = time.monotonic()
    partition0 = QueueManager().get_partition_stream(SERVICE, 0)
    try:
        await load.start()
        master = cluster.master_of(partition0)
        await until(lambda: len(load.handled) >= 60, 20, "traffic before the kill")
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
        await asyncio.to_thread(cluster.wait_failover, partition0, master, 30)
        await until(lambda: load.resumed("plain", killed_at) is not None, 30,
                    "plain sends to resume")
        await asyncio.to_thread(cluster.rejoin, master)  # the new master gets a replica
        await until(lambda: load.resumed("durable", killed_at) is not None, 30,
                    "sends with wait_replicas=1 to resume")
        await until(lambda: len([i for i, at in load.sent_at.items() if at > killed_at
                                 and i in load.handled]) >= 60, 30, "handling to resume")
        await load.stop_producing()
        await load.wait_handled(20)
        missing = await load.missing()
        print("\n" + load.report("failover of partition 0's master", killed_at)
              + f"; acknowledged entries missing from the streams after the failover: "
              f"{missing}")
        assert missing["durable"] == 0
        assert not load.lost("durable")
        assert all(worker.failed is None for worker in load.workers)
    except BaseException:
        print("\n" + load.report("failover (failed)", killed_at))
        raise
    finally:
        await load.close()
