"""The handler pipeline (workers/pipeline.py): expiry, idempotency and user layers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import types
import uuid
from datetime import timedelta
from typing import Any

import pytest

from actionbus import (
    ActionRejected,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    HandlerError,
    HandlerTimeout,
)
from actionbus.models.actions import utc_now
from actionbus.workers.pipeline import (
    CallNext,
    ExpiryLayer,
    IdempotencyLayer,
    LoggingLayer,
    MetricsLayer,
    Pipeline,
    ReplyLayer,
    Skipped,
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


async def test_the_debug_line_of_an_expired_request_says_expired(
    bus: Any, eventually: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """With DEBUG on, a worker's finished line for a request skipped as expired carries
    outcome "expired" (the run's result reaches the logging layer), and a handled
    action's line "handled"."""
    caplog.set_level(logging.DEBUG, "actionbus.worker")
    worker = bus.worker("inventory")
    worker.register("inventory.stock.get", noop)
    expired = DomainAction(
        action_type="inventory.stock.get", callback_queue_name=QM.get_response_queue(
            "orders", "gone"), expires_at=utc_now() - timedelta(seconds=1))
    handled = DomainAction(action_type="inventory.stock.get")
    for action in (expired, handled):
        await xadd_raw(bus.redis, "inventory", action.model_dump_json())
    await worker.start()
    await eventually(lambda: drained(bus.redis, "inventory"))

    def outcome_of(action: DomainAction) -> list[Any]:
        return [getattr(r, "outcome", None) for r in caplog.records
                if getattr(r, "action_id", None) == str(action.action_id)]

    await eventually(lambda: outcome_of(expired) and outcome_of(handled))
    assert (outcome_of(expired), outcome_of(handled)) == (["expired"], ["handled"])


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


def test_timings_outcomes_show_handled_only_once_a_run_was_handled() -> None:
    """A type with failed runs only has no ("handled") outcome (KeyError, not 0) and counts
    one outcome; handled runs then show up in the view, its length and its iteration."""
    timings = Timings()
    outcomes = timings.outcomes
    timings.observe("a.b.c", "failed", 0.0001)
    with pytest.raises(KeyError):
        outcomes[("a.b.c", "handled")]
    assert len(outcomes) == 1
    timings.observe("a.b.c", "handled", 0.0001)
    timings.observe("a.b.c", "handled", 0.0001)
    assert len(outcomes) == 2
    assert dict(outcomes) == {("a.b.c", "handled"): 2, ("a.b.c", "failed"): 1}


async def test_pipeline_times_every_handled_run_in_its_bucket() -> None:
    """Runs through ``Pipeline.run`` are each counted as handled and timed: quick ones, and
    ones of at least 3 ms that never land in the first (1 ms) bucket, also after the
    first run of their type (which creates its series)."""
    service = f"timed-{uuid.uuid4().hex[:8]}"
    worker = BaseWorker(CommonAppSettings(service_name=service))
    stats = WorkerStats()
    pipeline = Pipeline(worker.context, None, stats)  # type: ignore[arg-type]

    async def slow(action: DomainAction, data: Any) -> None:
        await asyncio.sleep(0.003)

    quick, slowly = Route(f"{service}.item.quick", noop), Route(f"{service}.item.slow", slow)
    timings = timings_for(service)
    for run in range(3):
        await pipeline.run(quick, DomainAction(action_type=quick.action_type))
        await pipeline.run(slowly, DomainAction(action_type=slowly.action_type))
        if run == 0:
            _, first = timings.cumulative(quick.action_type)
    assert stats.handled == 6
    assert timings.outcomes[(quick.action_type, "handled")] == 3
    assert timings.outcomes[(slowly.action_type, "handled")] == 3
    buckets, total = timings.cumulative(quick.action_type)
    assert buckets[-1] == ("+Inf", 3.0)
    assert total > first  # the later runs' durations were added
    buckets, total = timings.cumulative(slowly.action_type)
    assert buckets[0] == ("0.001", 0.0)
    assert buckets[-1] == ("+Inf", 3.0)
    assert total >= 0.0089  # each slept at least 3 ms


async def test_runs_of_at_most_1_ms_are_counted_in_the_first_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the pipeline's clock standing still (every run takes 0 s), three runs of one
    type, the first creating its series and the next two counted on the quick path, are
    all in the first bucket (le 0.001), none in the second."""
    import actionbus.workers.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "time", types.SimpleNamespace(perf_counter=lambda: 7.0))
    service = f"still-{uuid.uuid4().hex[:8]}"
    worker = BaseWorker(CommonAppSettings(service_name=service))
    pipeline = Pipeline(worker.context, None, WorkerStats())  # type: ignore[arg-type]
    quick = Route(f"{service}.item.quick", noop)
    for _ in range(3):
        await pipeline.run(quick, DomainAction(action_type=quick.action_type))
    buckets, total = timings_for(service).cumulative(quick.action_type)
    assert buckets[:2] == [("0.001", 3.0), ("0.0025", 3.0)]
    assert total == 0.0


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


def test_metrics_layer_counts_every_skip_and_times_it() -> None:
    """MetricsLayer.finished adds one to expired_skipped / duplicates_skipped per skipped
    run (not just sets it), and records a duration no longer than the run really took."""
    stats = WorkerStats()
    service = f"metrics-{uuid.uuid4().hex[:8]}"
    layer = MetricsLayer(stats, service)
    action = DomainAction(action_type=f"{service}.item.skip")
    before = time.perf_counter()
    for _ in range(3):
        layer.finished(action, Skipped("expired"), time.perf_counter())
        layer.finished(action, Skipped("duplicate"), time.perf_counter())
    took = time.perf_counter() - before
    assert (stats.expired_skipped, stats.duplicates_skipped) == (3, 3)
    _, total = timings_for(service).cumulative(action.action_type)
    assert 0 <= total <= took


async def test_idempotency_layer_in_a_chain_of_ones_own(bus: Any) -> None:
    """IdempotencyLayer used with chain() directly: the inner step gets the data the layer
    was called with; a result that is not a Prepared (no ReplyLayer inside) is returned as
    is and marks the action handled, so the next call is a duplicate without a reply."""
    worker = bus.worker("inventory")
    seen: list[Any] = []

    async def endpoint(action: DomainAction, data: Any) -> dict[str, Any]:
        seen.append(data)
        return {"ok": True}

    call = chain([IdempotencyLayer(bus.redis, worker.context)], endpoint)
    action = DomainAction(action_type="inventory.item.reserve")
    assert await call(action, {"sku": "A"}) == {"ok": True}
    assert seen == [{"sku": "A"}]
    assert await call(action, {"sku": "A"}) == Skipped("duplicate", None)
    assert seen == [{"sku": "A"}]


async def test_idempotency_replays_the_stored_reply_only_to_a_waiting_duplicate(
    bus: Any,
) -> None:
    """A duplicate gets the stored reply only if its caller waits on a reply list: the same
    action_id sent without a callback_queue_name is skipped without a reply, and so is a
    duplicate of an action that stored no reply (only the "handled" marker)."""
    worker = bus.worker("inventory")
    ctx = worker.context

    async def handler(action: DomainAction, data: Any) -> dict[str, Any]:
        return {"n": 1}

    call = chain([IdempotencyLayer(bus.redis, ctx), ReplyLayer(ctx)], handler)
    waiting = DomainAction(action_type="inventory.item.reserve",
                           callback_queue_name=QM.get_response_queue("orders", "r1"))
    first = await call(waiting, waiting.data)
    assert first.reply is not None
    assert await call(waiting, waiting.data) == Skipped("duplicate", first.reply)
    not_waiting = waiting.model_copy(update={"callback_queue_name": None})
    assert await call(not_waiting, not_waiting.data) == Skipped("duplicate", None)
    plain = DomainAction(action_type="inventory.item.reserve")
    await call(plain, plain.data)
    assert await call(plain, plain.data) == Skipped("duplicate", None)


async def test_idempotent_route_with_a_data_model_gets_validated_data(bus: Any) -> None:
    """An idempotent route (run through the traced path) still validates: its handler gets
    the data_model instance, not the raw dict."""
    worker = bus.worker("inventory")
    seen: list[Any] = []

    async def reserve(action: DomainAction, data: Any) -> None:
        seen.append(data)

    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    route = Route("inventory.item.reserve", reserve, Reserve, idempotent=True)
    await pipeline.run(route, DomainAction(action_type="inventory.item.reserve",
                                           data={"sku": "A", "qty": 2}))
    assert seen == [Reserve(sku="A", qty=2)]


async def test_timeout_layer_passes_the_data_on_with_or_without_a_timeout() -> None:
    """TimeoutLayer hands its inner step the data it was called with, whether it bounds the
    run (timeout set) or only watches it for the slow-handler warning (no timeout)."""
    seen: list[Any] = []

    async def endpoint(action: DomainAction, data: Any) -> str:
        seen.append(data)
        return "done"

    action = DomainAction(action_type="inventory.stock.get")
    assert await TimeoutLayer(5.0, 60.0)(action, {"a": 1}, endpoint) == "done"
    assert await TimeoutLayer(None, 60.0)(action, {"b": 2}, endpoint) == "done"
    assert seen == [{"a": 1}, {"b": 2}]


async def test_handler_timeout_says_what_ran_too_long_and_how_to_allow_more() -> None:
    """A run cancelled at its timeout raises HandlerTimeout naming the action, the timeout
    and the settings that raise it."""
    action = DomainAction(action_type="inventory.stock.slow")
    never = asyncio.Event()

    async def endpoint(action: DomainAction, data: Any) -> None:
        await never.wait()

    with pytest.raises(HandlerTimeout) as raised:
        await TimeoutLayer(0.01, 60.0)(action, {}, endpoint)
    message = str(raised.value)
    assert f"inventory.stock.slow {action.action_id} ran longer than its timeout of 0.01s" \
        in message
    assert "register(..., timeout=) or WorkerSettings.handler_timeout_s" in message


def _slow_warned(caplog: pytest.LogCaptureFixture, action: DomainAction) -> bool:
    return any("without a timeout" in r.getMessage() and str(action.action_id) in r.getMessage()
               for r in caplog.records)


async def test_each_of_several_slow_runs_at_once_is_warned_about(
    bus: Any, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Slow runs that started together are each watched: every one of them gets its
    slow-handler warning, through TimeoutLayer and through the pipeline's traced path."""
    release = asyncio.Event()

    async def slow(action: DomainAction, data: Any) -> None:
        await release.wait()

    layer = TimeoutLayer(None, warn_after=0.05)
    worker = bus.worker("inventory", slow_handler_warn_s=0.05)
    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    route = Route("inventory.stock.slow", slow, idempotent=True)
    actions = [DomainAction(action_type="inventory.stock.slow") for _ in range(4)]
    with caplog.at_level(logging.WARNING, "actionbus.worker"):
        tasks = [asyncio.create_task(layer(a, {}, slow)) for a in actions[:2]]
        tasks += [asyncio.create_task(pipeline.run(route, a)) for a in actions[2:]]
        for action in actions:
            await eventually(lambda a=action: _slow_warned(caplog, a), timeout=10)
        release.set()
        await asyncio.gather(*tasks)


async def test_the_same_action_object_run_twice_at_once_finishes_both_times(bus: Any) -> None:
    """One DomainAction object run twice concurrently (through TimeoutLayer without a
    timeout, or the pipeline's traced path) returns both results: the second run to finish
    does not trip over the first one's bookkeeping."""
    release, all_started = asyncio.Event(), asyncio.Event()
    started: list[int] = []

    async def gate(action: DomainAction, data: Any) -> dict[str, Any]:
        started.append(1)
        if len(started) == 4:
            all_started.set()
        await release.wait()
        return {"done": True}

    layer = TimeoutLayer(None, warn_after=60.0)
    action = DomainAction(action_type="inventory.stock.get")
    worker = bus.worker("inventory")
    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    route = Route("inventory.stock.get", gate, idempotent=True)
    tasks = [asyncio.create_task(layer(action, {}, gate)) for _ in range(2)]
    tasks += [asyncio.create_task(pipeline.run(route, action)) for _ in range(2)]
    await asyncio.wait_for(all_started.wait(), 10)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results[:2] == [{"done": True}, {"done": True}]
    assert [type(r).__name__ for r in results[2:]] == ["Prepared", "Prepared"]


def test_metrics_layer_times_a_failed_run_by_what_it_took() -> None:
    """MetricsLayer.failed records the run under outcome "failed" with a duration no longer
    than the run really took."""
    service = f"metrics-{uuid.uuid4().hex[:8]}"
    layer = MetricsLayer(WorkerStats(), service)
    action = DomainAction(action_type=f"{service}.item.fail")
    before = time.perf_counter()
    layer.failed(action, time.perf_counter())
    took = time.perf_counter() - before
    timings = timings_for(service)
    assert timings.outcomes[(action.action_type, "failed")] == 1
    _, total = timings.cumulative(action.action_type)
    assert 0 <= total <= took


def test_logging_layer_lines_carry_the_actions_fields_as_extra(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The failed-attempt INFO line and the finished DEBUG line carry service, action type,
    id, correlation id, trace id, outcome and the run's duration in ms as record attributes
    (for structured log handlers)."""
    layer = LoggingLayer("inventory")
    action = DomainAction(action_type="inventory.stock.get", correlation_id="c-1",
                          trace_id="t-1")
    before = time.perf_counter()
    with caplog.at_level(logging.DEBUG, "actionbus.worker"):  # runs that started 5 s ago
        layer.failed(action, time.perf_counter() - 5.0, ValueError("boom"))
        layer.finished(action, None, time.perf_counter() - 5.0)
        layer.finished(action, Skipped("duplicate"), time.perf_counter() - 5.0)
    took_ms = (time.perf_counter() - before) * 1000
    failed, finished, skipped = caplog.records
    for record, outcome in ((failed, "failed"), (finished, "handled"), (skipped, "duplicate")):
        fields = {name: getattr(record, name, None) for name in (
            "service", "action_type", "action_id", "correlation_id", "trace_id", "outcome")}
        assert fields == {"service": "inventory", "action_type": "inventory.stock.get",
                          "action_id": str(action.action_id), "correlation_id": "c-1",
                          "trace_id": "t-1", "outcome": outcome}
        duration_ms = getattr(record, "duration_ms", None)
        assert isinstance(duration_ms, float)
        assert 5000 <= duration_ms <= 5000 + took_ms + 0.01
        assert duration_ms == round(duration_ms, 2)  # to a hundredth of a millisecond
    assert getattr(failed, "error_type", None) == "ValueError"


async def test_slow_runs_at_once_through_the_plain_path_are_each_warned_about(
    bus: Any, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Pipeline.run's plain path (no idempotency, tracing off) watches each running action
    on its own: two slow runs that started together each get their slow-handler warning."""
    release = asyncio.Event()

    async def slow(action: DomainAction, data: Any) -> None:
        await release.wait()

    worker = bus.worker("inventory", slow_handler_warn_s=0.05)
    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    route = Route("inventory.stock.slow", slow)
    actions = [DomainAction(action_type="inventory.stock.slow") for _ in range(2)]
    with caplog.at_level(logging.WARNING, "actionbus.worker"):
        tasks = [asyncio.create_task(pipeline.run(route, a)) for a in actions]
        try:
            for action in actions:
                await eventually(lambda a=action: _slow_warned(caplog, a), timeout=10)
        finally:
            release.set()
            await asyncio.gather(*tasks)


async def test_the_same_action_object_run_twice_through_the_plain_path_finishes_both(
    bus: Any,
) -> None:
    """One DomainAction object run twice concurrently through Pipeline.run's plain path
    (no idempotency, tracing off) returns both results: the second run to finish does not
    trip over the first one's bookkeeping."""
    release, both_started = asyncio.Event(), asyncio.Event()
    started: list[int] = []

    async def gate(action: DomainAction, data: Any) -> None:
        started.append(1)
        if len(started) == 2:
            both_started.set()
        await release.wait()

    action = DomainAction(action_type="inventory.stock.get")
    worker = bus.worker("inventory")
    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    route = Route("inventory.stock.get", gate)
    tasks = [asyncio.create_task(pipeline.run(route, action)) for _ in range(2)]
    await asyncio.wait_for(both_started.wait(), 10)
    release.set()
    results = await asyncio.gather(*tasks)
    assert [type(r).__name__ for r in results] == ["Prepared", "Prepared"]


async def test_a_handled_run_is_timed_by_what_it_took(bus: Any) -> None:
    """Pipeline.run records a handled run under outcome "handled" with a duration no
    longer than the run really took."""
    service = f"timed-{uuid.uuid4().hex[:8]}"
    worker = bus.worker(service)
    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    action = DomainAction(action_type=f"{service}.item.get")
    before = time.perf_counter()
    await pipeline.run(Route(action.action_type, noop), action)
    took = time.perf_counter() - before
    timings = timings_for(service)
    assert timings.outcomes[(action.action_type, "handled")] == 1
    _, total = timings.cumulative(action.action_type)
    assert 0 <= total <= took


async def test_without_slow_handler_warn_s_the_warning_comes_after_twice_claim_idle(
    bus: Any,
) -> None:
    """slow_handler_warn_s unset: a handler without a timeout is warned about once it ran
    twice claim_idle_ms (in seconds), the time after which others may reclaim it."""
    worker = bus.worker("inventory", claim_idle_ms=250)
    pipeline = Pipeline(worker.context, bus.redis, WorkerStats())
    [timeout] = [layer for layer in pipeline.layers(Route("inventory.stock.get", noop))
                 if isinstance(layer, TimeoutLayer)]
    assert (timeout.timeout, timeout.warn_after) == (None, 0.5)


async def test_reply_layer_replies_with_the_handlers_result_for_the_data_it_was_given(
    bus: Any,
) -> None:
    """ReplyLayer in a chain of one's own: the handler runs with the data the layer was
    called with, and the reply it prepares carries the handler's result."""
    worker = bus.worker("inventory")
    seen: list[Any] = []

    async def handler(action: DomainAction, data: Any) -> dict[str, Any]:
        seen.append(data)
        return {"n": data["n"] + 1}

    call = chain([ReplyLayer(worker.context)], handler)
    action = DomainAction(action_type="inventory.item.reserve",
                          callback_queue_name=QM.get_response_queue("orders", "r1"))
    prepared = await call(action, {"n": 1})
    assert seen == [{"n": 1}]
    assert json.loads(prepared.reply)["data"] == {"n": 2}


async def test_a_handler_with_its_own_timeout_gets_the_actions_data(bus: Any) -> None:
    """A handler registered with ``timeout=`` runs under that bound with the action's
    data as usual: its answer is built from ``data``."""
    worker = bus.worker("inventory")

    async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"sku": data["sku"]}

    worker.register("inventory.stock.get", stock, timeout=5)
    await worker.start()
    client = bus.client("orders")
    response = await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.stock.get", data={"sku": "A-1"}), timeout=5)
    assert response is not None
    assert (response.success, response.data) == (True, {"sku": "A-1"})
