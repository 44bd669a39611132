"""The client's reply listener and batch errors, against a hand-written responder."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from actionbus import DomainAction, DomainActionResponse, InvalidReply, QueueManager, SendError
from actionbus.clients.layers import PublishNext

pytestmark = pytest.mark.backends

QM = QueueManager()


async def _requests(redis: Any, service: str, n: int) -> list[dict[str, Any]]:
    """The next ``n`` actions sent to ``service``'s main stream (read as a foreign
    responder would, with XREAD from the start)."""
    stream = QM.get_service_action_stream(service)
    seen: list[dict[str, Any]] = []
    last = "0"
    while len(seen) < n:
        reply = await redis.xread({stream: last}, count=n, block=5_000)
        assert reply, "no request arrived"
        for _, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                seen.append(json.loads(fields[b"data"]))
    return seen


def _answer(request: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    """A valid reply to ``request`` (as a worker would write it)."""
    action = DomainAction.model_validate(request)
    return DomainActionResponse.for_action(action, data=data).model_dump_json()


async def test_a_malformed_reply_fails_its_waiting_call_at_once(bus: Any) -> None:
    """A reply that breaks the spec but names its caller's correlation id makes that call
    raise InvalidReply now, not wait out its (long) timeout."""
    client = bus.client("orders")
    call = asyncio.create_task(client.send_action_pseudo_sync(
        DomainAction(action_type="quoting.price.get"), timeout=60))
    [request] = await _requests(bus.redis, "quoting", 1)
    await bus.redis.lpush(request["callback_queue_name"], json.dumps(
        {"correlation_id": request["action_id"], "success": "perhaps"}))
    with pytest.raises(InvalidReply) as caught:
        await asyncio.wait_for(call, 10)
    assert caught.value.correlation_id == request["action_id"]


async def test_a_malformed_reply_nobody_waits_for_is_logged_and_dropped(
    bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed reply for no waiting call is logged (naming the list and the error) and
    the waiting call beside it still gets its own answer."""
    client = bus.client("orders")
    call = asyncio.create_task(client.send_action_pseudo_sync(
        DomainAction(action_type="quoting.price.get"), timeout=60))
    [request] = await _requests(bus.redis, "quoting", 1)
    queue = request["callback_queue_name"]
    with caplog.at_level(logging.WARNING, logger="actionbus.client"):
        await bus.redis.lpush(queue, json.dumps({"correlation_id": "someone-else",
                                                 "success": "perhaps"}))
        await bus.redis.lpush(queue, _answer(request, {"p": 1}))
        response = await asyncio.wait_for(call, 10)
    assert response is not None
    assert response.data == {"p": 1}
    [line] = [r.getMessage() for r in caplog.records if "malformed reply" in r.getMessage()]
    assert queue in line
    assert "success" in line  # the validation error says which field


async def test_late_replies_are_counted_as_dropped(bus: Any) -> None:
    """Replies to calls that already timed out are dropped, each one counted."""
    client = bus.client("orders")
    for _ in range(2):
        assert await client.send_action_pseudo_sync(
            DomainAction(action_type="quoting.price.get"), timeout=0.1) is None
    waiting = asyncio.create_task(client.send_action_pseudo_sync(
        DomainAction(action_type="quoting.price.get"), timeout=60))
    late_one, late_two, current = await _requests(bus.redis, "quoting", 3)
    queue = current["callback_queue_name"]
    for request in (late_one, late_two, current):
        await bus.redis.lpush(queue, _answer(request))
    response = await asyncio.wait_for(waiting, 10)
    assert response is not None
    assert response.correlation_id == current["action_id"]
    assert client._replies.dropped == 2


async def test_a_batch_with_a_refused_target_names_it_and_sends_the_rest(bus: Any) -> None:
    """One action of a batch whose stream key is not a stream (WRONGTYPE) fails: the
    SendError counts and names it, says it was certainly not written, and the other
    actions were written."""
    await bus.redis.set(QM.get_service_action_stream("broken"), "not a stream")
    client = bus.client("orders")
    with pytest.raises(SendError) as caught:
        await client.send_actions_async([
            DomainAction(action_type="quoting.price.get"),
            DomainAction(action_type="broken.price.get"),
            DomainAction(action_type="quoting.price.set"),
        ])
    message = str(caught.value)
    assert "could not send 1 of a batch of 3 actions" in message
    assert "WRONGTYPE" in message
    assert f"to {QM.get_service_action_stream('broken')}:" in message
    assert caught.value.outcome_unknown is False
    written = await _requests(bus.redis, "quoting", 2)
    assert [r["action_type"] for r in written] == ["quoting.price.get", "quoting.price.set"]


async def test_a_batch_failing_after_the_write_reports_an_unknown_outcome(bus: Any) -> None:
    """When a publish layer fails after its action was written, the batch's SendError says
    the outcome is unknown (the action may be delivered): resend only to idempotent
    handlers."""
    client = bus.client("orders")

    async def flaky(action: DomainAction, call_next: PublishNext) -> str:
        entry_id = await call_next(action)
        if action.data.get("n") == 1:
            raise RuntimeError("the layer failed after the write")
        return entry_id

    client.use(flaky)
    with pytest.raises(SendError) as caught:
        await client.send_actions_async([
            DomainAction(action_type="quoting.price.get", data={"n": n}) for n in range(3)])
    assert "could not send 1 of a batch of 3 actions" in str(caught.value)
    assert "the layer failed after the write" in str(caught.value)
    assert caught.value.outcome_unknown is True
    assert len(await _requests(bus.redis, "quoting", 3)) == 3


async def test_a_batch_through_a_publish_layer_returns_each_entry_id_in_order(
    bus: Any,
) -> None:
    """With a publish layer, send_actions_async still returns each action's entry id, in
    the order given, as the stream holds them."""
    client = bus.client("orders")
    seen: list[str] = []

    async def note(action: DomainAction, call_next: PublishNext) -> str:
        entry_id = await call_next(action)
        seen.append(entry_id)
        return entry_id

    client.use(note)
    ids = await client.send_actions_async([
        DomainAction(action_type="quoting.price.get", data={"n": n}) for n in range(3)])
    stream = QM.get_service_action_stream("quoting")
    assert ids == [e[0].decode() for e in await bus.redis.xrange(stream)]
    assert seen == ids


async def test_a_batch_larger_than_one_pipeline_returns_every_entry_id(bus: Any) -> None:
    """A batch of more actions than one pipelined round holds (500) is written in several
    rounds and every entry id comes back, in order."""
    client = bus.client("orders")
    ids = await client.send_actions_async([
        DomainAction(action_type="quoting.price.get", data={"n": n}) for n in range(501)])
    stream = QM.get_service_action_stream("quoting")
    assert ids == [e[0].decode() for e in await bus.redis.xrange(stream)]
    assert len(ids) == 501


async def _answer_each(redis: Any, n: int) -> None:
    """Answer the next ``n`` calls to quoting, one at a time, as soon as each arrives."""
    stream = QM.get_service_action_stream("quoting")
    last = "$"
    for _ in range(n):
        reply = await redis.xread({stream: last}, count=1, block=5_000)
        [(_, [(entry_id, fields)])] = reply
        last = entry_id
        request = json.loads(fields[b"data"])
        await redis.lpush(request["callback_queue_name"], _answer(request))


async def test_the_listener_keeps_listening_after_a_lone_callers_answer(bus: Any) -> None:
    """After answering a lone caller the reply listener goes on: the next call, made at
    once, is answered well within its timeout (the listener neither died nor slept)."""
    client = bus.client("orders")
    responder = asyncio.create_task(_answer_each(bus.redis, 2))
    await asyncio.sleep(0.05)  # the responder waits on the stream
    first = await client.send_action_pseudo_sync(
        DomainAction(action_type="quoting.price.get"), timeout=10)
    assert first is not None
    task = client._replies._task
    assert task is not None
    await asyncio.sleep(0)
    assert not task.done()
    second = await client.send_action_pseudo_sync(
        DomainAction(action_type="quoting.price.get"), timeout=0.8)
    assert second is not None
    await responder


async def test_replies_arriving_together_are_delivered_without_an_outage(
    bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty replies pushed at once to twenty waiting calls all arrive, and the listener
    logs no outage taking them (the ones after the first are popped in one go)."""
    client = bus.client("orders")
    with caplog.at_level(logging.WARNING, logger="actionbus.client"):
        calls = [asyncio.create_task(client.send_action_pseudo_sync(
            DomainAction(action_type="quoting.price.get", data={"n": n}), timeout=30))
            for n in range(20)]
        requests = await _requests(bus.redis, "quoting", 20)
        await bus.redis.lpush(requests[0]["callback_queue_name"],
                              *[_answer(r, {"n": r["data"]["n"]}) for r in requests])
        answers = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert [a.data["n"] if a else None for a in answers] == list(range(20))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
