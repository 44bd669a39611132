"""Resharding under load on a 3-master + 3-replica cluster."""

from __future__ import annotations

import asyncio
import time

from actionbus.embedded import RedisCluster

from .cluster_load import STREAM, Load, until


async def test_moving_the_busy_slot_under_load_loses_nothing(
    redis_replica_cluster: RedisCluster,
) -> None:
    """The busy service's slot (stream, group, leases) moves to another master with
    SETSLOT/MIGRATE while producers, a pseudo-sync caller and two workers run: redirects
    are followed (no send fails, with or without wait_replicas), no acknowledged send is
    lost, handling goes on in the same processes."""
    cluster = redis_replica_cluster
    load = Load(cluster.url)
    started = time.monotonic()
    try:
        await load.start()
        source = cluster.master_of(STREAM)
        target = next(n for n in cluster.nodes[:3] if n is not source)
        await until(lambda: len(load.handled) >= 50, 20, "traffic before the move")
        started = time.monotonic()
        moved = await asyncio.to_thread(cluster.move_slot, STREAM, target)
        took = time.monotonic() - started
        assert cluster.master_of(STREAM) is target
        await until(lambda: load.resumed("plain", started + took) is not None and
                     load.resumed("durable", started + took) is not None, 30,
                     "sends after the move")
        after = time.monotonic()
        await until(lambda: load.first_handled_after(after) is not None, 30,
                     "handling after the move")
        await load.stop_producing()
        await load.wait_handled(20)
        print(f"\nresharding moved {moved} keys in {took:.2f}s; "
              + load.report("resharding of the busy slot", started))
        assert not load.lost()
        assert [p.errors for p in load.producers] == [0, 0]
        assert load.calls_failed == 0
        assert all(worker.failed is None for worker in load.workers)
    except BaseException:
        print("\n" + load.report("resharding (failed)", started))
        raise
    finally:
        await load.close()
