"""The eager consume path (workers/eager.py): same guarantees as one task per entry."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from actionbus import DomainAction, HandlerTimeout
from actionbus.workers.eager import EagerRunner

pytestmark = pytest.mark.backends

_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


async def test_handler_raising_before_its_first_await_is_retried(
    bus: Any, eventually: Any
) -> None:
    """A handler that raises synchronously (no await yet) goes through the failure policy."""
    worker = bus.worker("eager")
    attempts: list[int] = []

    @worker.handler("eager.item.flaky")
    async def flaky(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="eager.item.flaky"))
    await eventually(lambda: worker.stats.handled == 1)
    assert len(attempts) == 3
    assert worker.stats.failed_attempts == 2
    assert worker.stats.dead_lettered == 0


async def test_handler_that_never_awaits_does_not_starve_the_loop(
    bus: Any, eventually: Any
) -> None:
    """Handlers that never await leave turns to other tasks between read batches."""
    worker = bus.worker("eager", concurrency=10, batch_size=10)
    ticks = 0
    observed: list[int] = []

    @worker.handler("eager.item.spin")
    async def spin(action: DomainAction, data: dict[str, Any]) -> None:
        observed.append(ticks)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    client = bus.client("orders")
    await client.send_actions_async(
        [DomainAction(action_type="eager.item.spin") for _ in range(200)]
    )
    side = asyncio.create_task(ticker())
    try:
        await worker.start()
        await eventually(lambda: worker.stats.handled == 200)
    finally:
        side.cancel()
    assert len(set(observed)) >= 200 // 10  # the ticker ran between (at least) every batch


async def test_concurrency_limit_holds_and_each_handler_has_its_own_task(
    bus: Any, eventually: Any
) -> None:
    """At most ``concurrency`` handlers run at once, each in a task of its own."""
    worker = bus.worker("eager", concurrency=3)
    release = asyncio.Event()
    running: set[asyncio.Task[Any] | None] = set()
    peak = 0
    started = 0

    @worker.handler("eager.item.wait")
    async def wait(action: DomainAction, data: dict[str, Any]) -> None:
        nonlocal peak, started
        task = asyncio.current_task()
        assert task not in running
        running.add(task)
        started += 1
        peak = max(peak, len(running))
        await release.wait()
        running.discard(task)

    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="eager.item.wait") for _ in range(10)]
    )
    await worker.start()
    await eventually(lambda: started == 3)
    for _ in range(20):  # a fourth one would start within a few loop turns
        await asyncio.sleep(0.005)
    assert started == 3
    assert worker.in_flight == 3
    release.set()
    await eventually(lambda: worker.stats.handled == 10)
    assert peak == 3
    # a slot is given back once the entry's output round lands, just after its count moves
    await eventually(lambda: worker.in_flight == 0)


async def test_timeout_cancels_only_the_overrunning_handler(bus: Any, eventually: Any) -> None:
    """asyncio.timeout entered before the first await binds to the handler, not the reader."""
    worker = bus.worker("eager", max_deliveries=1)
    done: list[str] = []

    @worker.handler("eager.item.slow", timeout=0.2)
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        await asyncio.sleep(30)

    @worker.handler("eager.item.fast")
    async def fast(action: DomainAction, data: dict[str, Any]) -> None:
        done.append(data["n"])

    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="eager.item.slow"))
    await eventually(lambda: worker.stats.dead_lettered == 1)
    for n in range(3):  # the read loop still reads after the timeout fired
        await client.send_action_async(DomainAction(action_type="eager.item.fast", data={"n": n}))
    await eventually(lambda: len(done) == 3)
    letters = await worker.dead_letters.list()
    assert letters[0].error_type == HandlerTimeout.__name__


async def test_each_job_runs_in_its_own_context() -> None:
    """A context variable set by one job is not seen by the next (as with tasks)."""
    seen: list[str] = []
    finished = asyncio.Event()

    async def job(name: str) -> None:
        seen.append(_SEEN.get())
        _SEEN.set(name)
        if name == "last":
            finished.set()

    runner = EagerRunner(lambda: None)
    for name in ("a", "b", "last"):
        runner.submit(lambda name=name: job(name))  # type: ignore[misc]
    await asyncio.wait_for(finished.wait(), 5)
    assert seen == ["", "", ""]


async def test_output_of_jobs_finished_eagerly_is_sent_once_for_the_batch() -> None:
    """Jobs that finish without suspending share one ``after`` round, after the last one."""
    events: list[str] = []
    sent = asyncio.Event()

    async def job(name: str) -> None:
        events.append(name)

    async def after() -> None:
        events.append("send")
        sent.set()

    runner = EagerRunner(lambda: None, after=after)
    for name in ("a", "b", "c"):
        runner.submit(job, name)
    await asyncio.wait_for(sent.wait(), 5)
    await asyncio.sleep(0)
    assert events == ["a", "b", "c", "send"]


async def test_urgent_output_is_sent_before_the_rest_of_the_batch_runs() -> None:
    """A job whose output a caller waits for (``urgent``) has it sent at once; the jobs
    after it run in the next runner, and their output gets its own round."""
    events: list[str] = []
    done = asyncio.Event()
    waiting: list[bool] = [False]

    async def job(name: str) -> None:
        events.append(name)
        waiting[0] = name == "reply"
        if name == "last":
            done.set()

    async def after() -> None:
        events.append("send")
        waiting[0] = False

    runner = EagerRunner(lambda: None, after=after, urgent=lambda: waiting[0])
    for name in ("reply", "bulk", "last"):
        runner.submit(job, name)
    await asyncio.wait_for(done.wait(), 5)
    for _ in range(100):  # bounded: the last round follows within a few loop turns
        if len(events) >= 5:
            break
        await asyncio.sleep(0)
    assert events == ["reply", "send", "bulk", "last", "send"]


async def test_submit_all_runs_the_jobs_in_order_each_in_its_own_context() -> None:
    """``submit_all`` is ``submit`` of each argument tuple, in order (contexts kept apart)."""
    seen: list[tuple[str, str]] = []
    finished = asyncio.Event()

    async def job(name: str) -> None:
        seen.append((name, _SEEN.get()))
        _SEEN.set(name)
        if name == "c":
            finished.set()

    runner = EagerRunner(lambda: None)
    runner.submit_all(job, [])
    assert not runner.tasks
    runner.submit_all(job, [("a",), ("b",), ("c",)])
    await asyncio.wait_for(finished.wait(), 5)
    assert seen == [("a", ""), ("b", ""), ("c", "")]


async def test_output_of_finished_jobs_does_not_wait_for_a_job_that_suspended() -> None:
    """A job that finished before one that suspends has its output sent right away, by the
    runner that takes over the queue, not when the suspended job ends; every runner task
    is forgotten once it ended."""
    events: list[str] = []
    release = asyncio.Event()
    sent = asyncio.Event()

    async def job(name: str) -> None:
        events.append(name)
        if name == "slow":
            await release.wait()
            events.append("slow done")

    async def after() -> None:
        events.append("send")
        sent.set()

    runner = EagerRunner(lambda: None, after=after)
    runner.submit(job, "fast")
    runner.submit(job, "slow")
    await asyncio.wait_for(sent.wait(), 5)
    assert events == ["fast", "slow", "send"]  # sent while "slow" still waits
    release.set()
    for _ in range(100):  # bounded: the suspended job ends within a few loop turns
        if not runner.tasks:
            break
        await asyncio.sleep(0)
    assert events == ["fast", "slow", "send", "slow done", "send"]
    assert runner.tasks == set()


async def test_runner_tasks_are_named_actionbus_entries_by_default() -> None:
    """Without a name, the runner tasks (what a task dump shows for a handler that is
    waiting) are named ``actionbus-entries``."""
    release = asyncio.Event()

    async def job() -> None:
        await release.wait()

    runner = EagerRunner(lambda: None)
    runner.submit(job)
    await asyncio.sleep(0)
    names = [task.get_name() for task in runner.tasks]
    release.set()
    await asyncio.wait_for(asyncio.gather(*runner.tasks), 5)
    assert names == ["actionbus-entries"]


async def test_a_lone_job_that_suspends_gets_one_after_round_when_it_ends() -> None:
    """A job alone in the queue that suspends hands nothing to a new runner: ``after``
    runs once, after the job ended, not also while it waits."""
    events: list[str] = []
    release = asyncio.Event()

    async def job() -> None:
        events.append("start")
        await release.wait()
        events.append("done")

    async def after() -> None:
        events.append("send")

    runner = EagerRunner(lambda: None, after=after)
    runner.submit(job)
    for _ in range(20):  # a few loop turns: time for a second runner, were one started
        await asyncio.sleep(0)
    release.set()
    for _ in range(100):  # bounded: the job ends within a few loop turns
        if not runner.tasks:
            break
        await asyncio.sleep(0)
    assert events == ["start", "done", "send"]
    assert runner.tasks == set()


async def test_jobs_submitted_together_share_one_runner_task() -> None:
    """Jobs submitted one after another before the loop runs wait for the one runner
    task the first submit started: no runner per job."""
    finished = asyncio.Event()
    ran: list[int] = []

    async def job(n: int) -> None:
        ran.append(n)
        if n == 2:
            finished.set()

    runner = EagerRunner(lambda: None)
    for n in range(3):
        runner.submit(job, n)
    started = len(runner.tasks)
    await asyncio.wait_for(finished.wait(), 5)
    assert started == 1
    assert ran == [0, 1, 2]
