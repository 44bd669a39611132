"""The failure policy (workers/policy.py): retries with backoff, rejection, dead letters."""

from __future__ import annotations

import asyncio
import enum
import json
from datetime import timedelta
from typing import Any

import pytest

from actionbus import ActionRejected, BaseWorker, CommonAppSettings, DomainAction, WorkerSettings
from actionbus.delayed import DELIVERIES_KEY, DelayedQueue
from actionbus.exceptions import UnknownActionType
from actionbus.models.actions import utc_now
from actionbus.workers.policy import (
    Bury,
    FailurePolicy,
    ReplyError,
    Retry,
    error_detail,
    safe_text,
)
from tests.workers.helpers import QM, dead_letters_of, drained

pytestmark = pytest.mark.backends


async def test_failing_async_action_retried_then_dead_lettered(bus: Any, eventually: Any) -> None:
    """An async action that keeps failing runs max_deliveries times, then is dead-lettered."""
    worker = bus.worker("inventory", max_deliveries=3)
    attempts: list[DomainAction] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(action)
        raise ConnectionResetError("downstream unavailable")

    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.reserve"))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert len(attempts) == 3
    assert letter.reason == "max_deliveries"
    assert letter.deliveries == 3
    assert letter.error_type == "ConnectionResetError"
    assert "downstream unavailable" in letter.error_message
    assert letter.stream == QM.get_service_action_stream("inventory")
    assert DomainAction.model_validate_json(letter.data).action_type == "inventory.item.reserve"
    await eventually(lambda: drained(bus.redis, "inventory"))
    await asyncio.sleep(0.1)
    assert len(attempts) == 3


async def test_transient_failure_is_retried_until_success(bus: Any, eventually: Any) -> None:
    """A handler that fails twice then succeeds is handled, not dead-lettered."""
    worker = bus.worker("inventory", max_deliveries=5)
    attempts: list[int] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError("flaky")

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.reserve"))
    await eventually(lambda: worker.stats.handled == 1)
    assert len(attempts) == 3
    assert await worker.dead_letters.count() == 0
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_action_rejected_is_not_retried(bus: Any, eventually: Any) -> None:
    """A handler raising ActionRejected is dead-lettered after one attempt."""
    worker = bus.worker("inventory", max_deliveries=5)
    attempts: list[int] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        raise ActionRejected("unknown sku", error_code="sku")

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.reserve"))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert attempts == [1]
    assert letter.reason == "rejected"


async def test_dead_lettered_callback_action_sends_failure_callback(
    bus: Any, eventually: Any
) -> None:
    """When an action with a callback is dead-lettered, the origin gets a failure callback."""
    billing = bus.worker("billing", max_deliveries=2)

    @billing.handler("billing.invoice.create")
    async def create(action: DomainAction, data: dict[str, Any]) -> None:
        raise ValueError("no customer")

    orders = bus.worker("orders")
    received: list[DomainAction] = []

    @orders.handler("orders.invoice.created")
    async def on_invoice(action: DomainAction, data: dict[str, Any]) -> None:
        received.append(action)

    await billing.start()
    await orders.start()
    await bus.client("orders").send_action_async_with_callback(
        DomainAction(action_type="billing.invoice.create"), "orders.invoice.created", "c1"
    )
    [callback] = await eventually(lambda: received)
    assert callback.metadata["success"] is False
    assert callback.metadata["error"]["error_type"] == "ValueError"
    assert callback.metadata["callback_context"] == "c1"
    assert await billing.dead_letters.count() == 1


def test_worker_settings_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """WorkerSettings refuses inconsistent or out-of-range values and reads its env prefix."""
    with pytest.raises(ValueError, match="retry_backoff_max_s"):
        WorkerSettings(retry_backoff_base_s=2, retry_backoff_max_s=1)
    with pytest.raises(ValueError, match="concurrency"):
        WorkerSettings(concurrency=0)
    with pytest.raises(ValueError, match="block_ms"):
        WorkerSettings(block_ms=1)
    settings = WorkerSettings(retry_backoff_base_s=0.5, retry_backoff_max_s=3)
    assert [settings.retry_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3]
    monkeypatch.setenv("ACTIONBUS_WORKER_MAX_DELIVERIES", "9")
    assert WorkerSettings().max_deliveries == 9


# -- FailurePolicy decisions, without Redis -------------------------------------------

POLICY = FailurePolicy(WorkerSettings(max_deliveries=3, retry_backoff_base_s=0.5,
                                      retry_backoff_max_s=1.5))
WAITING = DomainAction(action_type="inventory.stock.get",
                       callback_queue_name=QM.get_response_queue("orders", "c1"))


def test_policy_retries_a_transient_failure_with_backoff() -> None:
    """A plain exception before the last delivery is retried after the doubling delay."""
    action = DomainAction(action_type="inventory.stock.get")
    assert POLICY.decide(action, RuntimeError("flaky"), 1) == Retry(0.5)
    assert POLICY.decide(action, RuntimeError("flaky"), 2) == Retry(1.0)


def test_policy_retry_delays_are_the_settings_delays_without_jitter() -> None:
    """A FailurePolicy's retry delays are exactly the doubling, capped delays of its
    settings (no jitter: README's "doubles from base up to max")."""
    settings = WorkerSettings(retry_backoff_base_s=0.5, retry_backoff_max_s=3)
    policy = FailurePolicy(settings)
    delays = [policy.retry_delay(n) for n in (1, 2, 3, 4, 5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert delays == [settings.retry_delay(n) for n in (1, 2, 3, 4, 5)]


def test_policy_buries_at_max_deliveries_and_rejections_at_once() -> None:
    """The last delivery's failure and any ActionRejected are buried with their reason."""
    action = DomainAction(action_type="inventory.stock.get")
    last = POLICY.decide(action, RuntimeError("still broken"), 3)
    assert last == Bury("max_deliveries", "RuntimeError", "still broken")
    rejected = POLICY.decide(action, ActionRejected("never"), 1)
    assert isinstance(rejected, Bury)
    assert rejected.reason == "rejected"
    assert rejected.failure_callback is None


def test_policy_buries_refused_input_as_bad_input() -> None:
    """A rejection for bad input (an unknown action type, ``invalid_data``) of an action
    nobody waits for is buried as bad input (counted in ``bad_input``); any other
    rejection is buried as a handler failure."""
    action = DomainAction(action_type="inventory.stock.get")
    unknown = POLICY.decide(action, UnknownActionType("no handler"), 1)
    invalid = POLICY.decide(action, ActionRejected("bad", error_code="invalid_data"), 1)
    other = POLICY.decide(action, ActionRejected("never", error_code="sku"), 1)
    assert isinstance(unknown, Bury)
    assert isinstance(invalid, Bury)
    assert isinstance(other, Bury)
    assert [(d.reason, d.bad_input) for d in (unknown, invalid, other)] == [
        ("unknown_action_type", True), ("rejected", True), ("rejected", False)]


def test_policy_sends_a_failure_callback_for_callback_requests() -> None:
    """A buried durable-callback request carries the error its failure callback sends."""
    action = DomainAction(action_type="inventory.stock.get",
                          callback_action_type="orders.stock.checked", origin_service="orders")
    decision = POLICY.decide(action, ActionRejected("no such sku", error_code="sku"), 1)
    assert isinstance(decision, Bury)
    assert decision.failure_callback is not None
    assert decision.failure_callback.error_code == "sku"


def test_policy_replies_the_error_to_a_waiting_caller() -> None:
    """A waiting caller gets the error at once (not retried); past its deadline, no reply."""
    decision = POLICY.decide(WAITING, RuntimeError("boom"), 1)
    assert decision == ReplyError(error_detail(RuntimeError("boom")), send=True)
    expired = WAITING.model_copy(update={"expires_at": utc_now() - timedelta(seconds=1)})
    assert POLICY.decide(expired, RuntimeError("boom"), 1) == ReplyError(
        error_detail(RuntimeError("boom")), send=False)


def test_policy_admits_up_to_max_deliveries_and_buries_malformed() -> None:
    """Entries over-delivered by dying workers are buried before any attempt, as are bad ones."""
    assert POLICY.admit(3) is None
    refused = POLICY.admit(4)
    assert refused is not None
    assert (refused.reason, refused.error_type) == (
        "max_deliveries", "Abandoned")
    assert POLICY.malformed("InvalidJSON", "x") == Bury("malformed", "InvalidJSON", "x",
                                                         bad_input=True)


async def test_policy_retry_gives_up_on_a_vanished_entry(redis_client: Any) -> None:
    """Retry re-claims the entry (one more delivery), or reports False if it was deleted."""
    settings = CommonAppSettings(service_name="inventory")
    worker = BaseWorker(settings, worker_settings=WorkerSettings(consumer_name="c1"))
    ctx = worker.context
    await redis_client.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
    entry_id = (await redis_client.xadd(ctx.stream, {"data": "{}"})).decode()
    await redis_client.xreadgroup(ctx.group, "c1", {ctx.stream: ">"})
    assert await POLICY.retry(redis_client, ctx, entry_id, Retry(0)) is True
    [pending] = await redis_client.xpending_range(ctx.stream, ctx.group, "-", "+", 1)
    assert pending["times_delivered"] == 2
    await redis_client.xdel(ctx.stream, entry_id)
    assert await POLICY.retry(redis_client, ctx, entry_id, Retry(0)) is False


async def test_policy_retry_parks_an_attempt_with_no_deliveries_counted_by_default(
    redis_client: Any,
) -> None:
    """Retry of an entry with its payload but no ``deliveries`` given parks the attempt in
    the delayed set with 0 deliveries used in its envelope (and frees the slot: False)."""
    settings = CommonAppSettings(service_name="inventory")
    worker = BaseWorker(settings, worker_settings=WorkerSettings(consumer_name="c1"))
    ctx = worker.context
    await redis_client.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
    payload = DomainAction(action_type="inventory.item.n").model_dump_json()
    entry_id = (await redis_client.xadd(ctx.stream, {"data": payload})).decode()
    await redis_client.xreadgroup(ctx.group, "c1", {ctx.stream: ">"})
    assert await POLICY.retry(redis_client, ctx, entry_id, Retry(60), payload) is False
    [parked] = await DelayedQueue(redis_client, ctx.queues, "inventory").list()
    assert json.loads(parked.member)["metadata"][DELIVERIES_KEY] == 0


class _Unprintable(Exception):
    error_code = property(lambda self: 1 / 0)

    def __str__(self) -> str:
        raise ValueError("no")


def test_error_detail_never_raises() -> None:
    """error_detail turns any exception into a valid ErrorDetail: odd codes, bad __str__, huge."""
    detail = error_detail(_Unprintable())
    assert (detail.error_type, detail.error_code) == ("_Unprintable", None)
    assert "unprintable" in detail.message
    big = error_detail(ActionRejected("x" * 100_000, error_code="c"))
    assert len(big.message) < 4100
    odd = RuntimeError("m")
    odd.error_code = {"nested": [1]}  # type: ignore[attr-defined]
    assert error_detail(odd).error_code == "{'nested': [1]}"
    num = RuntimeError("m")
    num.error_code = 503  # type: ignore[attr-defined]
    assert error_detail(num).error_code == "503"


def test_error_detail_cuts_the_error_type_and_code_to_200_characters() -> None:
    """An exception type name or ``error_code`` longer than 200 characters is cut to 200
    in the ErrorDetail, with a note of the full length."""
    long_name = "E" * 300
    odd = type(long_name, (RuntimeError,), {})("m")
    odd.error_code = "c" * 300  # type: ignore[attr-defined]
    detail = error_detail(odd)
    assert detail.error_type == "E" * 200 + "… (300 characters, cut)"
    assert detail.error_code == "c" * 200 + "… (300 characters, cut)"


def test_safe_text_names_the_type_and_error_of_an_unprintable_value() -> None:
    """A value whose str() raises becomes "<unprintable TYPE: str() raised ERROR>"."""
    assert safe_text(_Unprintable()) == "<unprintable _Unprintable: str() raised ValueError>"


def test_safe_text_keeps_a_text_of_exactly_the_limit() -> None:
    """Text of exactly ``limit`` characters is kept whole; one more is cut."""
    assert safe_text("x" * 10, 10) == "x" * 10
    assert safe_text("x" * 11, 10) == "x" * 10 + "… (11 characters, cut)"


class _Code(str, enum.Enum):  # noqa: UP042 - not StrEnum: its str() is "_Code.BUSY"
    BUSY = "busy"


def test_an_error_code_that_is_a_str_enum_keeps_its_value() -> None:
    """A str-valued enum as ``error_code`` is reported by its value, not its repr-like
    str() ("_Code.BUSY")."""
    exc = RuntimeError("m")
    exc.error_code = _Code.BUSY  # type: ignore[attr-defined]
    assert error_detail(exc).error_code == "busy"
