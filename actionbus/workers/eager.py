"""Start each entry's coroutine eagerly, in as few tasks as possible, on Python 3.11 too.

A task per entry costs a loop hop to start and another for its done callback; with a
no-op handler that is a third of a worker's CPU per action. ``EagerRunner`` instead runs
queued jobs one after another inside one *runner* task: each job's coroutine runs until
it finishes or first suspends. A job that finishes at once costs no task at all. A job
that suspends keeps the runner task it started in for the rest of its life (so
``asyncio.current_task()``, ``asyncio.timeout()`` and task groups seen before the first
await stay right), and a new runner task takes over the queue. Each job runs in its own
copy of the context, as a task would. Only public asyncio API is used.

A job that never awaits runs to completion before the next; the queue only ever holds
what one read brought (at most the free slots), so the read loop gets its turn after
that batch, as it does with one task per entry.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from itertools import repeat
from typing import Any

__all__ = ["EagerRunner"]

logger = logging.getLogger("actionbus.worker")

Job = Callable[..., Coroutine[Any, Any, None]]

_ENDED = object()
"""What ``next()`` returns for a job that ended without suspending (it yields anything else)."""


@types.coroutine
def _resume(
    coro: Coroutine[Any, Any, None], ctx: contextvars.Context, pending: Any
) -> Generator[Any, Any, None]:
    """Drive a started ``coro`` from where it suspended on ``pending``, as a task would
    (the enclosing task waits on what ``coro`` yields and sends or throws the outcome)."""
    while True:
        try:
            value = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancellation (or a future's exception) goes in
            try:
                pending = ctx.run(coro.throw, exc)
            except StopIteration:
                return
        else:
            try:
                pending = ctx.run(coro.send, value)
            except StopIteration:
                return


class EagerRunner:
    """Runs submitted jobs eagerly; ``tasks`` are the runner tasks alive now."""

    def __init__(
        self,
        on_done: Callable[[], None],
        *,
        name: str = "actionbus-entries",
        after: Callable[[], Awaitable[None]] | None = None,
        urgent: Callable[[], bool] = lambda: False,
    ) -> None:
        self.on_done = on_done
        """Called after each job ends (however it ends)."""
        self.after = after
        """Awaited (never raising) once the jobs that finished eagerly in one runner's turn
        are done, and after each job that suspended: the worker sends their acks there,
        one round for a whole read batch of jobs that never suspended."""
        self.urgent = urgent
        """True when a job's output must not wait for the rest of the batch (a reply to a
        waiting caller): ``after`` runs at once and a new runner takes the queue."""
        self.name = name
        self.tasks: set[asyncio.Task[None]] = set()
        self._queue: deque[tuple[Job, tuple[Any, ...]]] = deque()
        self._runner_waiting = False  # a runner task will still take jobs from the queue

    @property
    def queued(self) -> int:
        """Jobs submitted and not started yet."""
        return len(self._queue)

    def submit(self, job: Job, *args: Any) -> None:
        """Run ``job(*args)`` soon: in the current runner's turn, or in a new runner task."""
        self._queue.append((job, args))
        if not self._runner_waiting:
            self._new_runner()

    def submit_all(self, job: Job, args: list[Any]) -> None:
        """``submit(job, *a)`` for each tuple ``a`` of ``args``, in order."""
        if args:
            self._queue.extend(zip(repeat(job), args))
            if not self._runner_waiting:
                self._new_runner()

    def drop_queued(self) -> int:
        """Forget jobs not started yet (at shutdown: their entries stay pending)."""
        dropped = len(self._queue)
        self._queue.clear()
        for _ in range(dropped):
            self._done()
        return dropped

    def _new_runner(self, finished: bool = False) -> None:
        self._runner_waiting = True
        task = asyncio.get_running_loop().create_task(self._run(finished), name=self.name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _done(self) -> None:
        try:
            self.on_done()
        except Exception:  # pragma: no cover - on_done only sets an event
            logger.exception("bookkeeping after an action failed")

    async def _after(self) -> None:
        if self.after is not None:
            try:
                await self.after()
            except Exception:  # pragma: no cover - the output batcher's flush never raises
                logger.exception("sending the output of finished actions failed")

    async def _run(self, finished: bool = False) -> None:
        """Run queued jobs; ``finished``: jobs finished before, their output not sent yet."""
        queue, popleft, copy_context = self._queue, self._queue.popleft, contextvars.copy_context
        on_done, urgent = self.on_done, self.urgent
        while queue:
            job, args = popleft()
            coro = job(*args)
            ctx = copy_context()
            try:
                # next() with a default: a job that ends raises no StopIteration here
                pending = ctx.run(next, coro.__await__(), _ENDED)
            except (Exception, asyncio.CancelledError) as exc:
                finished = True
                self._done()
                if not isinstance(exc, asyncio.CancelledError):
                    logger.error("action task failed unexpectedly", exc_info=exc)
                continue
            if pending is _ENDED:
                try:  # self._done() inlined
                    on_done()
                except Exception:  # pragma: no cover - on_done only sets an event
                    logger.exception("bookkeeping after an action failed")
                if queue and urgent():  # send it now; the rest of the queue goes on
                    self._runner_waiting = False
                    self._new_runner()
                    await self._after()
                    return
                finished = True
                continue
            # It suspended: it keeps this task; a new runner takes the rest of the queue.
            self._runner_waiting = False
            if queue or finished:  # the next runner also sends what finished before
                self._new_runner(finished)
            try:
                await _resume(coro, ctx, pending)
            except Exception as exc:
                logger.error("action task failed unexpectedly", exc_info=exc)
            finally:
                try:
                    await self._after()
                finally:
                    self._done()
            return
        self._runner_waiting = False
        if finished:
            await self._after()
