"""Typed handlers, checked by mypy in ``make lint`` (never run): ``data_model=Order`` gives
the handler ``data: Order``; without a model it gets ``dict[str, Any]``.

Each ``# type: ignore[...]`` marks a line that MUST be a type error: with mypy's
``warn_unused_ignores`` (strict), the check fails if that line ever type-checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, assert_type

from pydantic import BaseModel

from actionbus import BaseWorker, DomainAction


class Order(BaseModel):
    order_id: str


class Refund(BaseModel):
    amount: int


def check(worker: BaseWorker) -> None:
    """Never called: only type-checked."""

    @worker.handler("orders.order.create", data_model=Order)
    async def create(action: DomainAction, data: Order) -> dict[str, str]:
        return {"order_id": data.order_id}

    assert_type(create, Callable[[DomainAction, Order], Awaitable[dict[str, str]]])

    @worker.handler("orders.order.note")
    async def note(action: DomainAction, data: dict[str, Any]) -> None:
        return None

    assert_type(note, Callable[[DomainAction, dict[str, Any]], Awaitable[None]])

    async def refund(action: DomainAction, data: Refund) -> None:
        return None

    async def raw(action: DomainAction, data: dict[str, Any]) -> None:
        return None

    worker.register("orders.refund.create", refund, data_model=Refund)
    worker.register("orders.raw.seen", raw)

    # A handler expecting another model than the one declared is a type error...
    worker.register("orders.order.cancel", refund, data_model=Order)  # type: ignore[arg-type]
    # ...and so is a model-typed handler registered without a data model.
    worker.register("orders.order.pay", refund)  # type: ignore[arg-type]

    @worker.handler("orders.order.ship", data_model=Order)  # type: ignore[arg-type]
    async def ship(action: DomainAction, data: Refund) -> None:
        return None


def check_timeouts(worker: BaseWorker) -> None:
    """Never called: ``timeout=`` keeps the typed overloads (seconds or timedelta)."""
    from datetime import timedelta

    @worker.handler("orders.order.slow", data_model=Order, timeout=2.5)
    async def slow(action: DomainAction, data: Order) -> None:
        return None

    assert_type(slow, Callable[[DomainAction, Order], Awaitable[None]])

    async def raw(action: DomainAction, data: dict[str, Any]) -> None:
        return None

    worker.register("orders.raw.slow", raw, timeout=timedelta(seconds=3))
    worker.register("orders.raw.bad", raw, timeout="3s")  # type: ignore[call-overload]
