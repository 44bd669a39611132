"""The read loop (workers/reader.py): concurrency bound, groups and consumers."""

from __future__ import annotations

import asyncio
from typing import Any

from actionbus import (
    DomainAction,
)


async def test_concurrency_bound_respected(bus: Any, eventually: Any) -> None:
    """No more than ``concurrency`` handlers run at the same time."""
    worker = bus.worker("inventory", concurrency=3)
    running = 0
    peak = 0
    done: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        done.append(1)

    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.slow") for _ in range(12)]
    )
    await worker.start()
    await eventually(lambda: len(done) == 12)
    assert peak == 3


async def test_consumers_of_one_group_share_the_work(bus: Any, eventually: Any) -> None:
    """Two workers of one service split the actions; each action is handled once."""
    seen: list[tuple[str, int]] = []
    for name in ("w1", "w2"):
        worker = bus.worker("inventory", consumer_name=name, concurrency=2)

        async def handle(action: DomainAction, data: dict[str, Any], name: str = name) -> None:
            await asyncio.sleep(0.01)
            seen.append((name, data["i"]))

        worker.register("inventory.item.n", handle)
        await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.n", data={"i": i}) for i in range(20)]
    )
    await eventually(lambda: len(seen) == 20)
    await asyncio.sleep(0.1)
    assert sorted(i for _, i in seen) == list(range(20))
    assert {name for name, _ in seen} == {"w1", "w2"}


async def test_separate_groups_each_get_every_action(bus: Any, eventually: Any) -> None:
    """A worker with its own group_name receives every action too (fan-out)."""
    seen: dict[str, list[int]] = {"inventory": [], "audit": []}
    for group in ("inventory", "audit"):
        worker = bus.worker("inventory", group_name=group)

        async def handle(action: DomainAction, data: dict[str, Any], group: str = group) -> None:
            seen[group].append(data["i"])

        worker.register("inventory.item.n", handle)
        await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.n", data={"i": i}) for i in range(3)]
    )
    await eventually(lambda: len(seen["inventory"]) == 3 and len(seen["audit"]) == 3)
