"""The handler pipeline (workers/pipeline.py): expiry, idempotency and user layers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from actionbus import ActionRejected, BaseWorker, CommonAppSettings, DomainAction, HandlerError
from actionbus.models.actions import utc_now
from actionbus.workers.pipeline import (
    CallNext,
    ExpiryLayer,
    IdempotencyLayer,
    LoggingLayer,
    MetricsLayer,
    Pipeline,
    ReplyLayer,
    TimeoutLayer,
    TracingLayer,
    ValidationLayer,
    chain,
)
from actionbus.workers.routing import Route
from actionbus.workers.stats import WorkerStats
from actionbus.workers.timings import Timings, timings_for
from tests.workers.helpers import QM, Reserve, dead_letters_of, drained, noop, xadd_raw

pytestmark = pytest.mark.backends


async def test_expired_pseudo_sync_request_skipped_and_acked(bus: Any, eventually: Any) -> None:
    """A request whose expires_at passed is acknowledged without running the handler."""
    worker = bus.worker("inventory")
    calls: list[Any] = []

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(action)

    queue = QM.get_response_queue("orders", "gone")
    action = DomainAction(
        action_type="inventory.stock.get", callback_queue_name=queue,
        expires_at=utc_now() - timedelta(seconds=1),
    )
    await xadd_raw(bus.redis, "inventory", action.model_dump_json())
    await worker.start()
    await eventually(lambda: worker.stats.expired_skipped == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert calls == []
    assert not await bus.redis.exists(queue)
    assert await worker.dead_letters.count() == 0


async def test_idempotent_handler_not_rerun_for_same_action_id(bus: Any, eventually: Any) -> None:
    """With idempotent=True a second delivery of the same action_id is acked, not re-run,
    and counted with outcome "duplicate"."""
    worker = bus.worker("inventory")
    calls: list[str] = []

    @worker.handler("inventory.item.reserve", idempotent=True)
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(str(action.action_id))

    outcomes = timings_for("inventory").outcomes
    key = ("inventory.item.reserve", "duplicate")
    before = outcomes.get(key, 0)
    await worker.start()
    payload = DomainAction(action_type="inventory.item.reserve").model_dump_json()
    await xadd_raw(bus.redis, "inventory", payload)
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))
    await xadd_raw(bus.redis, "inventory", payload)
    await eventually(lambda: worker.stats.duplicates_skipped == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert len(calls) == 1
    assert outcomes.get(key, 0) == before + 1  # the handler outcome metric's "duplicate"


async def test_idempotent_duplicate_gets_the_stored_reply(bus: Any, eventually: Any) -> None:
    """A waiting caller resending an already handled action gets the first response again."""
    worker = bus.worker("inventory")
    calls: list[int] = []

    @worker.handler("inventory.item.reserve", idempotent=True)
    async def reserve(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls)}

    await worker.start()
    client = bus.client("orders")
    action = DomainAction(action_type="inventory.item.reserve")
    first = await client.send_action_pseudo_sync(action, timeout=5)
    second = await client.send_action_pseudo_sync(action, timeout=5)
    assert first is not None
    assert second is not None
    assert first.data == second.data == {"n": 1}
    assert calls == [1]


class Recorder:
    """A user layer that records entering and leaving, and what it saw."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        self.log.append(f"{self.name}>{type(data).__name__}")
        result = await call_next(action, data)
        self.log.append(f"<{self.name}:{result}")
        return result


async def test_chain_runs_layers_outermost_first() -> None:
    """chain() wraps the endpoint so layers[0] runs first and returns last."""
    log: list[str] = []

    async def endpoint(action: DomainAction, data: Any) -> str:
        log.append("handler")
        return "done"

    call = chain([Recorder("a", log), Recorder("b", log)], endpoint)
    assert await call(DomainAction(action_type="x.y.z"), {}) == "done"
    assert log == ["a>dict", "b>dict", "handler", "<b:done", "<a:done"]


def test_builtin_layers_wrap_user_layers_in_documented_order() -> None:
    """metrics, logging, expiry, idempotency, reply, tracing, validation, timeout, then user
    layers."""
    worker = BaseWorker(CommonAppSettings(service_name="inventory"))
    users = [Recorder("a", []), Recorder("b", [])]
    pipeline = Pipeline(worker.context, None, WorkerStats(), users)  # type: ignore[arg-type]
    route = Route("inventory.item.reserve", noop, Reserve, idempotent=True)
    kinds = [type(layer) for layer in pipeline.layers(route)]
    assert kinds == [MetricsLayer, LoggingLayer, ExpiryLayer, IdempotencyLayer, ReplyLayer,
                     TracingLayer, ValidationLayer, TimeoutLayer, Recorder, Recorder]
    assert pipeline.layers(route)[-2:] == users
    plain = [type(layer) for layer in pipeline.layers(Route("inventory.x.y", noop))]
    assert plain == [MetricsLayer, LoggingLayer, ExpiryLayer, ReplyLayer, TracingLayer,
                     TimeoutLayer, Recorder, Recorder]


async def test_user_layers_wrap_the_handler_with_validated_data(bus: Any) -> None:
    """Layers added with use() run in order around the handler and see the data model."""
    worker = bus.worker("inventory")
    log: list[str] = []
    worker.use(Recorder("outer", log))
    worker.use(Recorder("inner", log))

    @worker.handler("inventory.item.reserve", data_model=Reserve)
    async def reserve(action: DomainAction, data: Reserve) -> dict[str, Any]:
        log.append("handler")
        return {"sku": data.sku}

    await worker.start()
    response = await bus.client("orders").send_action_pseudo_sync(
        DomainAction(action_type="inventory.item.reserve", data={"sku": "A", "qty": 1}),
        timeout=5,
    )
    assert response is not None
    assert response.data == {"sku": "A"}
    assert log == ["outer>Reserve", "inner>Reserve", "handler",
                   "<inner:{'sku': 'A'}", "<outer:{'sku': 'A'}"]


async def test_a_layer_can_answer_or_fail_instead_of_the_handler(
    bus: Any, eventually: Any
) -> None:
    """A layer's own result is the reply; its exception goes through the failure policy."""
    worker = bus.worker("inventory")
    calls: list[str] = []

    async def gate(action: DomainAction, data: Any, call_next: CallNext) -> Any:
        if action.data.get("blocked"):
            raise ActionRejected("blocked by the gate")
        if action.data.get("cached"):
            return {"from": "cache"}
        return await call_next(action, data)

    async def handler(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        calls.append("handler")
        return {"from": "handler"}

    worker.use(gate)
    worker.register("inventory.stock.get", handler)
    await worker.start()
    client = bus.client("orders")
    cached = await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.stock.get", data={"cached": True}), timeout=5)
    assert cached is not None
    assert cached.data == {"from": "cache"}
    assert calls == []
    await client.send_action_async(
        DomainAction(action_type="inventory.stock.get", data={"blocked": True}))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.reason, letter.error_message) == ("rejected", "blocked by the gate")
    assert calls == []


async def test_use_after_start_is_refused(bus: Any) -> None:
    """Layers are fixed once the worker runs: use() afterwards raises HandlerError."""
    worker = bus.worker("inventory")
    await worker.start()
    with pytest.raises(HandlerError, match="before start"):
        worker.use(Recorder("late", []))


def test_timings_cumulative_buckets_end_with_inf() -> None:
    """Durations go to Prometheus-style cumulative buckets labelled by bound, "+Inf" last."""
    timings = Timings()
    timings.observe("a.b.c", "handled", 0.003)
    timings.observe("a.b.c", "handled", 100.0)
    buckets, total = timings.cumulative("a.b.c")
    assert buckets[:3] == [("0.001", 0.0), ("0.0025", 0.0), ("0.005", 1.0)]
    assert buckets[-2:] == [("30.0", 1.0), ("+Inf", 2.0)]
    assert total == 100.003


def test_timings_outcomes_is_a_live_view_by_type_and_outcome() -> None:
    """``Timings.outcomes`` read once keeps showing later runs, keyed (type, outcome); a run
    at or under the first bound lands in that bucket."""
    timings = Timings()
    outcomes = timings.outcomes
    timings.observe("a.b.c", "handled", 0.001)
    timings.observe("a.b.c", "failed", 0.0001)
    timings.observe("a.b.d", "handled", 0.002)
    assert dict(outcomes) == {("a.b.c", "handled"): 1, ("a.b.c", "failed"): 1,
                              ("a.b.d", "handled"): 1}
    assert outcomes.get(("a.b.x", "handled"), 0) == 0
    assert outcomes.get(("a.b.c", "duplicate"), 0) == 0
    buckets, _ = timings.cumulative("a.b.c")
    assert buckets[0] == ("0.001", 2.0)


def test_timings_outcomes_of_an_unknown_type_raise_key_error_naming_the_key() -> None:
    """Like any mapping, ``Timings.outcomes`` raises KeyError carrying the missing
    (action type, outcome) key for an action type it never timed."""
    timings = Timings()
    timings.observe("a.b.c", "handled", 0.001)
    with pytest.raises(KeyError) as caught:
        timings.outcomes[("a.b.x", "handled")]
    assert caught.value.args == (("a.b.x", "handled"),)


async def test_failed_and_handled_runs_are_timed_by_outcome(bus: Any, eventually: Any) -> None:
    """The metrics see every run: a failed attempt is timed as ``failed``, the retry that
    succeeds as ``handled`` (the handler's timings by action type and outcome)."""
    worker = bus.worker("inventory")
    attempts: list[int] = []
    timings = timings_for("inventory")
    before = {o: timings.outcomes.get(("inventory.stock.flaky", o), 0)
              for o in ("failed", "handled")}

    async def flaky(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    worker.register("inventory.stock.flaky", flaky)
    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.stock.flaky"))
    await eventually(lambda: worker.stats.handled == 1)
    after = {o: timings.outcomes.get(("inventory.stock.flaky", o), 0) for o in before}
    assert after == {"failed": before["failed"] + 1, "handled": before["handled"] + 1}
