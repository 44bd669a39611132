"""Helpers shared by the worker tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from actionbus import (
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    QueueManager,
)

Settings = Callable[..., CommonAppSettings]
QM = QueueManager("dev")


class Reserve(BaseModel):
    """Data of inventory.item.reserve."""

    sku: str
    qty: int


async def noop(action: DomainAction, data: Any) -> None:
    return None


async def xadd_raw(redis: Any, service: str, payload: dict[str, Any] | str) -> str:
    """Append a raw entry as any producer (redis-cli, Node, Go) would."""
    raw = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    entry_id = await redis.xadd(QM.get_service_action_stream(service), {"data": raw})
    return str(entry_id.decode())


async def pending_count(redis: Any, service: str) -> int:
    info = await redis.xpending(QM.get_service_action_stream(service), service)
    return int(info["pending"])


async def drained(redis: Any, service: str) -> bool:
    """True once nothing is pending (unacknowledged) for ``service``."""
    return await pending_count(redis, service) == 0


async def dead_letters_of(worker: BaseWorker) -> list[Any]:
    return await worker.dead_letters.list()
