"""The ``inventory`` service: a worker whose handlers keep stock levels in Redis.

Run by the demo runner as ``python -m actionbus.demo.inventory``. Handlers:

- ``inventory.stock.restock`` (fire-and-forget): add stock with ``update_state``;
- ``inventory.stock.reserve``: take stock, or raise ``ActionRejected`` when there is not
  enough (the caller gets an error response, or a callback saying it failed);
- ``inventory.stock.levels``: the current ``StockLevels`` (``load_state``);
- ``inventory.dead_letters.list``: what ``worker.dead_letters.list()`` holds.

The worker runs with ``concurrency=1`` so the demo's actions are handled in the order
they were sent, which keeps the printed story in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any

from actionbus import (
    ActionRejected,
    BaseService,
    BaseWorker,
    DomainAction,
    RedisManager,
    RedisStateManager,
)
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.dead_letters import DeadLetter
from actionbus.demo.common import (
    DEAD_LETTERS,
    INITIAL_STOCK,
    INVENTORY,
    LEVELS,
    RESERVE,
    RESTOCK,
    STOCK_KEY,
    DeadLetterQuery,
    StockChange,
    StockLevels,
    app_settings,
    run_service,
    say,
    setup_logging,
    stop_when_orphaned,
    worker_settings,
    write_report,
)


def _show(levels: dict[str, int]) -> str:
    return ", ".join(f"{sku}={n}" for sku, n in sorted(levels.items()))


class InventoryService(BaseService):
    """Stock levels as one ``StockLevels`` state, changed atomically by ``update_state``."""

    def __init__(self, settings: CommonAppSettings, redis: AnyRedis) -> None:
        super().__init__(settings, direct_redis_conn=redis)
        self.state = RedisStateManager(self.redis_conn, StockLevels, settings)

    async def reset(self) -> StockLevels:
        """Start from ``INITIAL_STOCK`` (``save_state``)."""
        stock = StockLevels(levels=dict(INITIAL_STOCK))
        await self.state.save_state(STOCK_KEY, stock)
        return stock

    async def levels(self) -> StockLevels:
        """The stored stock (``load_state``)."""
        return await self.state.load_state(STOCK_KEY) or StockLevels()

    async def restock(self, change: StockChange) -> tuple[int, int]:
        """Add ``change.quantity``; return (before, after)."""
        before = 0

        def add(current: StockLevels | None) -> StockLevels:
            nonlocal before
            stock = (current or StockLevels()).model_copy(deep=True)
            before = stock.levels.get(change.sku, 0)
            stock.levels[change.sku] = before + change.quantity
            return stock

        await self.state.update_state(STOCK_KEY, add)
        return before, before + change.quantity

    async def reserve(self, change: StockChange) -> int:
        """Take ``change.quantity`` out of stock; return what is left.

        ``ActionRejected`` when there is not enough: retrying cannot help.
        """

        def take(current: StockLevels | None) -> StockLevels:
            stock = (current or StockLevels()).model_copy(deep=True)
            have = stock.levels.get(change.sku, 0)
            if have < change.quantity:
                raise ActionRejected(
                    f"only {have} {change.sku} in stock, {change.quantity} requested",
                    error_code="out_of_stock",
                )
            stock.levels[change.sku] = have - change.quantity
            stock.reserved[change.sku] = stock.reserved.get(change.sku, 0) + change.quantity
            return stock

        stock = await self.state.update_state(STOCK_KEY, take)
        return stock.levels[change.sku]


def _dead_letter_summary(letter: DeadLetter) -> dict[str, Any]:
    try:
        action_type = str(json.loads(letter.data).get("action_type", "?"))
    except ValueError:
        action_type = "?"
    return {
        "action_type": action_type,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "deliveries": letter.deliveries,
    }


async def list_dead_letters(worker: BaseWorker, query: DeadLetterQuery) -> list[dict[str, Any]]:
    """``worker.dead_letters.list()``, waiting up to ``query.wait_s`` for ``min_count``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + query.wait_s
    while loop.time() < deadline:
        if await worker.dead_letters.count() >= query.min_count:
            break
        await asyncio.sleep(0.05)
    return [_dead_letter_summary(letter) for letter in await worker.dead_letters.list()]


def build_worker(service: InventoryService, settings: CommonAppSettings) -> BaseWorker:
    """The inventory worker and its handlers."""
    worker = BaseWorker(
        settings, service.redis_conn, worker_settings=worker_settings(concurrency=1)
    )

    @worker.handler(RESTOCK, data_model=StockChange)
    async def restock(action: DomainAction, data: StockChange) -> dict[str, Any]:
        before, after = await service.restock(data)
        say(INVENTORY, f"handled {RESTOCK}: {data.sku} {before} → {after}  (update_state)")
        return {"sku": data.sku, "level": after}

    @worker.handler(RESERVE, data_model=StockChange, idempotent=True)
    async def reserve(action: DomainAction, data: StockChange) -> dict[str, Any]:
        context = action.metadata.get("callback_context")
        how = f" for {context}" if context else ""
        try:
            left = await service.reserve(data)
        except ActionRejected as exc:
            say(INVENTORY, f"handled {RESERVE}{how}: {exc} → raise ActionRejected")
            raise
        say(INVENTORY, f"handled {RESERVE}{how}: reserved {data.quantity} {data.sku}, "
                       f"{left} left  (update_state)")
        return {"sku": data.sku, "reserved": data.quantity, "left": left}

    @worker.handler(LEVELS)
    async def levels(action: DomainAction, data: dict[str, Any]) -> StockLevels:
        stock = await service.levels()
        say(INVENTORY, f"handled {LEVELS}: {_show(stock.levels)}  (load_state)")
        return stock

    @worker.handler(DEAD_LETTERS, data_model=DeadLetterQuery)
    async def dead_letters(action: DomainAction, data: DeadLetterQuery) -> dict[str, Any]:
        letters = await list_dead_letters(worker, data)
        say(INVENTORY, f"handled {DEAD_LETTERS}: worker.dead_letters.list() → "
                       f"{len(letters)} entr{'y' if len(letters) == 1 else 'ies'}")
        return {"count": len(letters), "entries": letters}

    return worker


async def main() -> int:
    """Serve until SIGTERM, then report what the worker did."""
    settings = app_settings(INVENTORY)
    setup_logging(INVENTORY)
    async with RedisManager(settings) as manager:
        service = InventoryService(settings, manager.get_client())
        stock = await service.reset()
        worker = build_worker(service, settings)
        await worker.start()
        say(INVENTORY, f"pid {os.getpid()}: worker up, stock {_show(stock.levels)} (save_state); "
                       f"handles {', '.join(worker.registry.action_types)}")
        write_report(f"{INVENTORY}.ready", {"pid": os.getpid()})
        watchdog = asyncio.create_task(stop_when_orphaned(worker.request_stop))
        await worker.run()  # returns after SIGTERM and the worker's graceful stop()
        watchdog.cancel()
        letters = await list_dead_letters(worker, DeadLetterQuery(wait_s=0))
        final = await service.levels()
        say(INVENTORY, f"SIGTERM: worker drained and stopped ({worker.stats.handled} handled); "
                       f"stock {_show(final.levels)}; {len(letters)} dead letter(s)")
        write_report(INVENTORY, {
            "stats": dataclasses.asdict(worker.stats),
            "dead_letters": letters,
            "stock": final.levels,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(run_service(INVENTORY, main()))
