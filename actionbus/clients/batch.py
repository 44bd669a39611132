"""``send_actions_async``: many actions through the publish layers, then written together.

Each action runs through the client's layers concurrently; the innermost step only
validates and encodes, then waits. Once every action has reached it (or one has failed,
in which case nothing is written), all are written in pipelined rounds, one per
cluster node, and each chain resumes with its own entry id or error. Without layers
(none given) the actions are encoded in order and written, with no task per action.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from actionbus.clients.durable import DurableWriter
from actionbus.clients.layers import PublishLayer, PublishNext, build_chain
from actionbus.clients.sender import StreamWriter
from actionbus.exceptions import ActionBusError, SendError
from actionbus.models.actions import DomainAction

__all__ = ["send_batch"]


async def send_batch(
    actions: list[DomainAction],
    *,
    layers: Sequence[PublishLayer],
    encode: Callable[[DomainAction], tuple[str, bytes]],
    before_write: Callable[[], None],
    writer: StreamWriter | DurableWriter,
    send_error: Callable[[DomainAction, str, BaseException], SendError],
) -> list[str]:
    """Send ``actions`` (the client's copies); return their entry ids in order."""
    if not actions:
        return []
    if not layers:
        plain = [(action, *encode(action)) for action in actions]
        before_write()
        results = await writer.xadd_many([(stream, payload) for _, stream, payload in plain])
        failed: list[BaseException] = []
        for (action, stream, _), result in zip(plain, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(result if isinstance(result, ActionBusError)
                              else send_error(action, stream, result))
        if failed:
            raise _partly_sent(failed, len(actions)) from failed[0]
        return [str(result) for result in results]
    loop = asyncio.get_running_loop()
    encoded: dict[int, tuple[DomainAction, str, bytes]] = {}
    ready: list[asyncio.Future[None]] = [loop.create_future() for _ in actions]
    written: list[asyncio.Future[str]] = [loop.create_future() for _ in actions]

    def innermost(i: int) -> PublishNext:
        async def write(action: DomainAction) -> str:
            encoded[i] = (action, *encode(action))
            ready[i].set_result(None)
            return await written[i]

        return write

    async def run(i: int, action: DomainAction) -> str:
        return await build_chain(layers, innermost(i))(action)

    tasks = [asyncio.create_task(run(i, action)) for i, action in enumerate(actions)]
    try:
        for i, task in enumerate(tasks):
            pair: list[asyncio.Future[Any]] = [ready[i], task]
            await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
            if not ready[i].done():
                error = task.exception()
                if error is not None:
                    raise error
        before_write()
    except BaseException:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        raise
    order = sorted(encoded)
    results = await writer.xadd_many([encoded[i][1:] for i in order])
    for i, result in zip(order, results, strict=True):
        if isinstance(result, BaseException):
            action, stream, _ = encoded[i]
            error = result if isinstance(result, ActionBusError) else \
                send_error(action, stream, result)
            written[i].set_exception(error)
        else:
            written[i].set_result(result)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise _partly_sent(failed, len(actions)) from failed[0]
    return [str(o) for o in outcomes]


def _partly_sent(failed: list[BaseException], total: int) -> SendError:
    """The error of a batch some of whose actions failed (``failed``, in order)."""
    first = failed[0]
    return SendError(
        f"could not send {len(failed)} of a batch of {total} actions; first: "
        f"{first}. The others were sent; resend the failed ones with the same "
        "action_ids and let idempotent handlers skip duplicates.",
        outcome_unknown=any(getattr(o, "outcome_unknown", True) for o in failed),
    )
