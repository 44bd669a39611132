"""BaseWorker itself: construction, lifecycle (start, stop, restart), shared clients."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    ClientNotInitializedError,
    CommonAppSettings,
    ConfigurationError,
    DomainAction,
    HandlerError,
    RedisManager,
    UnknownActionType,
    WorkerSettings,
)
from actionbus.workers import output
from actionbus.workers.mover import Mover
from tests.conftest import fast_worker_settings
from tests.workers.helpers import QM, Settings, drained, noop, pending_count

pytestmark = pytest.mark.backends


def test_constructor_rejects_bad_service_name(conn: Any, make_settings: Settings) -> None:
    """A worker for an invalid service name is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="service name"):
        BaseWorker(make_settings(), conn, service_name="bad:name")


def test_constructor_rejects_socket_timeout_below_block(
    conn: Any, make_settings: Settings
) -> None:
    """redis_socket_timeout must exceed block_ms, or every blocking read would time out."""
    with pytest.raises(ConfigurationError, match="block_ms"):
        BaseWorker(
            make_settings(redis_socket_timeout=1), conn,
            worker_settings=WorkerSettings(block_ms=2000),
        )


def test_a_socket_timeout_exactly_half_a_second_over_block_ms_is_refused(
    conn: Any, make_settings: Settings
) -> None:
    """The socket timeout must exceed block_ms by more than 0.5 s: 1 s against a 500 ms
    block is refused, 1 s against 499 ms is accepted."""
    with pytest.raises(ConfigurationError, match=r"at least 0\.5 s"):
        BaseWorker(make_settings(redis_socket_timeout=1), conn,
                   worker_settings=WorkerSettings(block_ms=500))
    BaseWorker(make_settings(redis_socket_timeout=1), conn,
               worker_settings=WorkerSettings(block_ms=499))


def test_the_default_consumer_name_is_host_pid_and_six_random_hex_digits(
    conn: Any, make_settings: Settings
) -> None:
    """Without consumer_name, a worker is named ``<host>-<pid>-<6 random hex digits>``
    (README: host-pid-random), different for each worker of one process."""
    first = BaseWorker(make_settings(service_name="inventory"), conn)
    second = BaseWorker(make_settings(service_name="inventory"), conn)
    form = re.compile(re.escape(f"{socket.gethostname()}-{os.getpid()}-") + "[0-9a-f]{6}")
    assert form.fullmatch(first.consumer), first.consumer
    assert form.fullmatch(second.consumer), second.consumer
    assert first.consumer != second.consumer


def test_outage_log_every_s_paces_both_outage_logs_of_a_worker(
    conn: Any, make_settings: Settings
) -> None:
    """WorkerSettings.outage_log_every_s is how often the worker's read-side and its
    output-side outage logs repeat themselves while Redis stays down."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn,
                        worker_settings=WorkerSettings(outage_log_every_s=5.0))
    assert (worker._outage.every, worker._output_outage.every) == (5.0, 5.0)


def test_redis_client_before_start_raises(make_settings: Settings) -> None:
    """Without a client given, redis_client before start() is ClientNotInitializedError."""
    worker = BaseWorker(make_settings())
    with pytest.raises(ClientNotInitializedError, match="start"):
        _ = worker.redis_client


async def test_start_creates_stream_and_group(bus: Any) -> None:
    """start() creates the service's stream and its consumer group when missing."""
    stream = QM.get_service_action_stream("inventory")
    assert not await bus.redis.exists(stream)
    worker = bus.worker("inventory")
    await worker.start()
    groups = await bus.redis.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [b"inventory"]
    await worker.start()  # a second start is a no-op


async def test_actions_sent_before_worker_existed_are_delivered(bus: Any, eventually: Any) -> None:
    """Actions already on the stream when the group is created are handled."""
    client = bus.client("orders")
    for i in range(3):
        await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": i}))
    seen: list[int] = []
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.n")
    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["i"])

    await worker.start()
    await eventually(lambda: len(seen) == 3)
    assert sorted(seen) == [0, 1, 2]


async def test_stop_leaves_unfinished_actions_pending(bus: Any, eventually: Any) -> None:
    """stop() after the grace period leaves an unfinished action pending for another worker."""
    worker = bus.worker("inventory")
    started = asyncio.Event()

    @worker.handler("inventory.item.hang")
    async def hang(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.hang"))
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop(grace=0.1)
    assert worker.in_flight == 0
    assert worker.stats.handled == 0
    assert await pending_count(bus.redis, "inventory") == 1

    rescuer = bus.worker(
        "inventory", claim_idle_ms=100, reclaim_interval_s=0.1, consumer_name="rescuer"
    )
    rescued: list[DomainAction] = []

    @rescuer.handler("inventory.item.hang")
    async def finish(action: DomainAction, data: dict[str, Any]) -> None:
        rescued.append(action)

    await rescuer.start()
    await eventually(lambda: rescued)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert rescuer.stats.reclaimed == 1


async def test_stop_drains_in_flight_actions_within_grace(bus: Any, eventually: Any) -> None:
    """stop() lets a running handler finish within the grace period and acknowledges it."""
    worker = bus.worker("inventory")
    started = asyncio.Event()
    finished: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(1)

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.slow"))
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop(grace=5)
    assert finished == [1]
    assert worker.stats.handled == 1
    assert await pending_count(bus.redis, "inventory") == 0


async def test_concurrent_start_runs_one_set_of_loops(
    conn: Any, make_settings: Settings
) -> None:
    """Two concurrent start() calls start the worker once; stop() leaves no task behind."""
    worker = BaseWorker(
        make_settings(service_name="inventory"), conn, worker_settings=WorkerSettings(block_ms=100)
    )

    def ours() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("actionbus-")
                and t.get_name().endswith(worker.stream) and not t.done()]

    try:
        await asyncio.gather(worker.start(), worker.start())
        running = len(ours())
        await worker.stop(grace=0.1)
        await asyncio.sleep(0.05)
        left = ours()
    finally:  # never leave orphans running into the next test
        await worker.stop(grace=0.1)
        orphans = ours()
        for task in orphans:
            task.cancel()
        await asyncio.gather(*orphans, return_exceptions=True)
    # read, recovery, upkeep, mover, output, presence, partitions, ordered output, ordered p0
    assert running == 9
    assert left == []


async def test_the_workers_loops_run_in_tasks_named_after_loop_and_stream(
    conn: Any, make_settings: Settings
) -> None:
    """A started worker's loops are tasks named ``actionbus-<loop>:<stream>`` (what a task
    dump shows): read, recovery, upkeep, mover, output and presence."""
    worker = BaseWorker(
        make_settings(service_name="inventory"), conn, worker_settings=WorkerSettings(block_ms=100)
    )
    await worker.start()
    try:
        names = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    finally:
        await worker.stop(grace=0.1)
    loops = ("read", "recovery", "upkeep", "mover", "output", "presence")
    assert {f"actionbus-{loop}:{worker.stream}" for loop in loops} <= names


async def test_async_with_and_run(bus: Any, make_settings: Settings) -> None:
    """``async with worker`` starts and stops it; run() returns after request_stop()."""
    worker = bus.worker("inventory")
    async with worker:
        assert worker.redis_client is bus.redis
    other = BaseWorker(
        make_settings(service_name="inventory"),
        worker_settings=WorkerSettings(block_ms=100, consumer_name="own-client"),
    )
    task = asyncio.create_task(other.run())
    await asyncio.sleep(0.2)
    assert await other.redis_client.ping()
    other.request_stop()
    await asyncio.wait_for(task, 5)
    with pytest.raises(ClientNotInitializedError):
        _ = other.redis_client


def test_worker_accepts_base_redis_client_peer(conn: Any, make_settings: Settings) -> None:
    """A worker and a client of the same service agree on the stream name."""
    settings = make_settings(service_name="inventory")
    worker = BaseWorker(settings, conn)
    client = BaseRedisClient("inventory", conn, settings)
    assert worker.stream == client.queue_manager.get_service_action_stream("inventory")
    assert worker.group == "inventory"


async def test_restart_after_stop(bus: Any, eventually: Any) -> None:
    """A stopped worker can be started again and handles new actions."""
    worker = bus.worker("inventory")
    seen: list[int] = []

    @worker.handler("inventory.item.n")
    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["i"])

    client = bus.client("orders")
    await worker.start()
    await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": 1}))
    await eventually(lambda: seen == [1])
    await worker.stop()
    await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": 2}))
    await worker.start()
    await eventually(lambda: seen == [1, 2])


async def test_stop_ends_a_loop_that_swallowed_its_cancellation(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() returns even when a loop swallows its cancellation once (redis-py's per-write
    wait_for did, on Python 3.11, in the mover): the loop is cancelled again until it ends."""
    entered, swallowed = asyncio.Event(), asyncio.Event()
    original = Mover.round

    async def round_once_deaf(self: Mover) -> float:
        if swallowed.is_set():
            return await original(self)
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # returns as if the round had ended
        return 0.01

    monkeypatch.setattr(Mover, "round", round_once_deaf)
    worker = bus.worker("inventory")
    await worker.start()
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.wait_for(worker.stop(grace=0.5), 10)
    assert swallowed.is_set()


async def test_a_read_does_not_start_an_entry_already_in_progress(
    bus: Any, eventually: Any
) -> None:
    """An entry that a read brings while this worker already handles it (a recovery raced
    the read) is not started again; the other entries of that read are."""
    worker = bus.worker("inventory")
    release = asyncio.Event()
    calls: list[int] = []

    @worker.handler("inventory.item.hold")
    async def hold(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(data["n"])
        await release.wait()

    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.hold", data={"n": 1}))
    await eventually(lambda: calls == [1])
    [(first, fields)] = await bus.redis.xrange(worker.stream)
    other = DomainAction(action_type="inventory.item.hold", data={"n": 2}).model_dump_json()
    worker._spawn_read(worker.stream, [(first, fields), (b"1-1", {b"data": other.encode()})])
    await eventually(lambda: calls == [1, 2])
    assert worker.in_flight == 2
    release.set()
    await eventually(lambda: worker.stats.handled == 2)
    await eventually(lambda: worker.in_flight == 0)
    assert calls == [1, 2]


async def _run_until_one_action(worker: BaseWorker, sender: BaseRedisClient) -> None:
    """run() the worker until the handler of one action sent asks it to stop."""
    @worker.handler("inventory.item.stop")
    async def stop(action: DomainAction, data: dict[str, Any]) -> None:
        worker.request_stop()

    running = asyncio.create_task(worker.run())
    await sender.send_action_async(DomainAction(action_type="inventory.item.stop"))
    await asyncio.wait_for(running, 30)


@pytest.mark.standalone_only("signal handlers do not depend on the backend")
async def test_run_works_outside_the_main_thread(make_settings: Settings) -> None:
    """run() in a thread that is not the main one (where asyncio cannot install signal
    handlers: RuntimeError) still runs the worker until request_stop()."""
    handled: list[int] = []

    async def in_thread() -> None:
        async with RedisManager(make_settings()) as manager:
            redis = manager.get_client()
            worker = BaseWorker(make_settings(service_name="inventory"), redis,
                                worker_settings=fast_worker_settings())
            sender = BaseRedisClient("orders", redis, make_settings(service_name="orders"))
            await _run_until_one_action(worker, sender)
            handled.append(worker.stats.handled)

    def thread_main() -> None:
        assert threading.current_thread() is not threading.main_thread()
        asyncio.run(in_thread())

    await asyncio.to_thread(thread_main)
    assert handled == [1]


async def test_unknown_action_type_error_lists_the_registered_types(bus: Any) -> None:
    """An action with no handler fails with UnknownActionType naming the service, the type
    and the registered types, sorted and comma-separated."""
    worker = bus.worker("inventory")
    worker.register("inventory.item.b", noop)
    worker.register("inventory.item.a", noop)
    with pytest.raises(UnknownActionType) as caught:
        await worker.handle_action(DomainAction(action_type="inventory.item.x"))
    assert str(caught.value) == (
        "service 'inventory' has no handler for 'inventory.item.x'; "
        "registered: inventory.item.a, inventory.item.b"
    )


async def test_unknown_action_type_error_says_none_are_registered(bus: Any) -> None:
    """A worker without handlers says so in its UnknownActionType: "registered: none"."""
    worker = bus.worker("inventory")
    with pytest.raises(UnknownActionType) as caught:
        await worker.handle_action(DomainAction(action_type="inventory.item.x"))
    assert str(caught.value).endswith("; registered: none")


async def test_use_after_start_says_to_add_layers_before_start(bus: Any) -> None:
    """use() on a running worker is a HandlerError that says what to do instead."""
    worker = bus.worker("inventory")
    await worker.start()
    with pytest.raises(HandlerError) as caught:
        worker.use(lambda action, data, call_next: call_next(action, data))
    assert str(caught.value) == "add pipeline layers before start(); the worker is running"


async def test_loop_error_on_a_cluster_moves_the_default_node_to_another_primary(
    redis_cluster_url: str,
) -> None:
    """After a background loop error on Redis Cluster, the worker's client resolves keyless
    routing on another primary than before (the failed one may be lost), every time."""
    settings = CommonAppSettings(_env_file=None, redis_url=redis_cluster_url,
                                 redis_cluster=True, service_name="inventory")
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        assert isinstance(redis, RedisCluster)
        worker = BaseWorker(settings, redis, worker_settings=fast_worker_settings())
        primaries = redis.get_primaries()
        assert len(primaries) >= 2
        for _ in range(30):
            before = redis.get_default_node()
            await worker._after_loop_error(RedisConnectionError("lost"))
            after = redis.get_default_node()
            assert after is not before
            assert after in primaries


async def test_a_failed_background_loop_on_a_cluster_moves_the_default_node(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor of a running worker's loops calls ``_after_loop_error``: after the
    mover's loop fails once on Redis Cluster and is restarted, the client resolves keyless
    routing on another primary than before."""
    original = Mover.run
    runs: list[int] = []

    async def run_failing_once(self: Mover) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("mover failed once")
        await original(self)

    monkeypatch.setattr(Mover, "run", run_failing_once)
    settings = CommonAppSettings(_env_file=None, redis_url=redis_cluster_url,
                                 redis_cluster=True, service_name="inventory")
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        assert isinstance(redis, RedisCluster)
        worker = BaseWorker(settings, redis, worker_settings=fast_worker_settings())
        before = redis.get_default_node()
        await worker.start()
        try:
            for _ in range(200):
                if len(runs) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(runs) >= 2, "the mover's loop was not restarted"
            assert redis.get_default_node() is not before
        finally:
            await worker.stop(grace=0.5)


def test_register_keeps_the_idempotent_flag(conn: Any, make_settings: Settings) -> None:
    """register(..., idempotent=True) marks the route idempotent."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn)
    worker.register("inventory.item.once", noop, idempotent=True)
    route = worker.registry.get("inventory.item.once")
    assert route is not None
    assert route.idempotent is True


async def test_before_ack_is_called_with_each_entry_before_its_ack(
    bus: Any, eventually: Any
) -> None:
    """The ``before_ack`` seam (set before start) sees the key of every entry the worker
    acknowledges, the main stream's and an ordered action's alike."""
    seen: list[str] = []
    handled: list[int] = []

    async def handle(action: DomainAction, data: Any) -> None:
        handled.append(data["i"])

    worker = bus.worker("inventory")
    worker.register("inventory.item.n", handle)
    worker.before_ack = seen.append
    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": 1}))
    await eventually(lambda: len(seen) == 1)
    await client.send_action_async(DomainAction(
        action_type="inventory.item.n", data={"i": 2}, ordering_key="k"))
    await eventually(lambda: len(seen) == 2)
    [(first_id, _)] = await bus.redis.xrange(worker.stream)
    assert seen[0] == first_id.decode()
    assert handled == [1, 2]


async def test_stop_gives_in_flight_actions_the_grace_it_is_passed(
    bus: Any, eventually: Any
) -> None:
    """stop(grace=0.9) waits up to 0.9 s for an action in progress, whatever
    shutdown_grace_s says (here 0.01 s) and although less than 1 s is left: a handler
    released 0.3 s into the stop finishes and is acknowledged."""
    worker = bus.worker("inventory", shutdown_grace_s=0.01)
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await release.wait()
        finished.append(1)

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.slow"))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(worker.stop(grace=0.9))
    await asyncio.sleep(0.3)  # well into the grace, well past shutdown_grace_s
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert finished == [1]
    assert await pending_count(bus.redis, "inventory") == 0


async def test_stop_does_not_wait_for_a_handler_that_ignores_its_cancellation(
    bus: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that swallows the cancellation at the end of the grace keeps running, but
    stop() still returns (after a short wait for it, well within 5 s), warns that one
    action is left unacknowledged, and the entry stays pending for another worker."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    worker = bus.worker("inventory")
    started, release = asyncio.Event(), asyncio.Event()
    cancellations: list[int] = []

    @worker.handler("inventory.item.stubborn")
    async def stubborn(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancellations.append(1)

    await worker.start()
    try:
        await bus.client("orders").send_action_async(
            DomainAction(action_type="inventory.item.stubborn"))
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(worker.stop(grace=0.1), 5)
        assert cancellations == [1]
        assert any("1 action(s) left unacknowledged" in r.getMessage() for r in caplog.records)
        assert await pending_count(bus.redis, "inventory") == 1
    finally:
        release.set()


async def test_a_main_stream_read_redis_refuses_marks_the_worker_unhealthy(
    bus: Any, eventually: Any
) -> None:
    """The service's stream replaced by a string (its reads refused: WRONGTYPE, not an
    outage): the worker is marked unhealthy, the refused XREADGROUP named in its health."""
    worker = bus.worker("inventory")
    await worker.start()
    assert worker.health.healthy
    async with bus.redis.pipeline(transaction=True) as pipe:
        pipe.delete(worker.stream)
        pipe.set(worker.stream, "not a stream")
        await pipe.execute()
    await eventually(lambda: not worker.health.healthy, timeout=10)
    assert any(key.startswith("XREADGROUP") for key in worker.health.refused)
    assert any(worker.stream in problem for problem in worker.health.problems)


@pytest.mark.standalone_only("pauses the one server (CLIENT PAUSE)")
async def test_a_stalled_main_stream_read_counts_as_a_slow_command(
    conn: Any, make_settings: Settings, eventually: Any, redis_server: Any,
) -> None:
    """Redis stalled longer than the socket timeout while the worker's one reader waits:
    its slow read counts in the worker's health.slow_commands."""
    worker = BaseWorker(make_settings(service_name="inventory", redis_socket_timeout=1.0),
                        worker_settings=fast_worker_settings())
    await worker.start()
    try:
        assert worker.health.slow_commands == 0
        with redis_server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 2500, "ALL")
        await eventually(lambda: worker.health.slow_commands >= 1, timeout=15)
    finally:
        await worker.stop()


async def _ordered_in_flight_at_stop(bus: Any, grace: float) -> list[int]:
    """Stop (with ``grace``) a worker while an ordered action runs; its handler is released
    0.3 s into the stop. What the handler finished."""
    worker = bus.worker("inventory")
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await release.wait()
        finished.append(1)

    await worker.start()
    await bus.client("orders").send_action_async(
        DomainAction(action_type="inventory.item.slow", ordering_key="k"))
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(worker.stop(grace=grace))
    await asyncio.sleep(0.3)
    release.set()
    await asyncio.wait_for(stopping, 10)
    return finished


async def test_stop_gives_an_ordered_action_in_progress_what_is_left_of_the_grace(
    bus: Any,
) -> None:
    """An ordered action running at stop(grace=2) is given the rest of the grace: released
    0.3 s into the stop, it finishes."""
    assert await _ordered_in_flight_at_stop(bus, grace=2.0) == [1]


async def test_stop_with_no_grace_cancels_an_ordered_action_in_progress(bus: Any) -> None:
    """stop(grace=0) gives an ordered action in progress no time at all: released 0.3 s
    into the stop, it had been cancelled already (its entry stays pending)."""
    assert await _ordered_in_flight_at_stop(bus, grace=0.0) == []


async def test_an_action_is_acknowledged_right_after_its_batch_not_at_the_output_sweep(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry runner sends the acks of the actions it finished right after their batch:
    with the output loop's sweep an hour away, a handled action is acknowledged at once."""
    monkeypatch.setattr(output, "_SWEEP_SECONDS", 3600.0)
    worker = bus.worker("inventory")
    worker.register("inventory.item.add", noop)
    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.add"))
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_stop_cancels_an_ordered_action_once_the_grace_is_spent_on_other_actions(
    bus: Any,
) -> None:
    """stop(grace=1.5) spends the whole grace waiting for an unordered action that never
    ends: an ordered action still running then gets what is left of the grace (nothing) and
    is cancelled right after the unordered one, not seconds later."""
    worker = bus.worker("inventory")
    started = {"slow": asyncio.Event(), "ordered": asyncio.Event()}
    cancelled = {"slow": asyncio.Event(), "ordered": asyncio.Event()}

    async def forever(action: DomainAction, data: dict[str, Any]) -> None:
        kind = action.action_type.rsplit(".", 1)[1]
        started[kind].set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled[kind].set()

    worker.register("inventory.item.slow", forever)
    worker.register("inventory.item.ordered", forever)
    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.slow"))
    await client.send_action_async(
        DomainAction(action_type="inventory.item.ordered", ordering_key="k"))
    for event in started.values():
        await asyncio.wait_for(event.wait(), 10)
    stopping = asyncio.create_task(worker.stop(grace=1.5))
    await asyncio.wait_for(cancelled["slow"].wait(), 10)  # the grace is over
    await asyncio.wait_for(cancelled["ordered"].wait(), 1.0)  # grace + elapsed: 3 s later
    await asyncio.wait_for(stopping, 10)
