"""The ``orders`` service: sends actions to ``inventory`` in all three patterns.

Run by the demo runner as ``python -m actionbus.demo.orders``. Its worker handles one
action type, ``orders.reservation.completed``: the callback that ``inventory`` sends back
after an action sent with ``send_action_async_with_callback``. The scenario runs next to
the worker; afterwards the service keeps serving until SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from collections import Counter
from typing import Any

from actionbus import (
    BaseRedisClient,
    BaseService,
    BaseWorker,
    DomainAction,
    DomainActionResponse,
    RedisManager,
)
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.demo.common import (
    DEAD_LETTERS,
    FIRST_SERVICE_STEP,
    LEVELS,
    ORDERS,
    RESERVATION_DONE,
    RESERVE,
    RESTOCK,
    app_settings,
    run_service,
    say,
    setup_logging,
    short,
    stop_when_orphaned,
    worker_settings,
    write_report,
)

REPLY_TIMEOUT_S = 5.0


class OrdersService(BaseService):
    """Sends actions and remembers what it sent, what came back and what looked wrong."""

    def __init__(self, settings: CommonAppSettings, client: BaseRedisClient, redis: AnyRedis):
        super().__init__(settings, service_redis_client=client, direct_redis_conn=redis)
        self.sent: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()
        self.callbacks: asyncio.Queue[DomainAction] = asyncio.Queue()
        self.callbacks_received = 0
        self.problems: list[str] = []
        self.step = FIRST_SERVICE_STEP - 1

    def title(self, text: str) -> None:
        """Start the next numbered step."""
        self.step += 1
        say(ORDERS, text, step=self.step)

    def expect(self, ok: bool, what: str) -> None:
        """Record a problem (and say so) unless ``ok``."""
        if not ok:
            self.problems.append(f"step {self.step}: {what}")
            say(ORDERS, f"✗ unexpected: {what}")

    async def fire_and_forget(self, action_type: str, data: dict[str, Any]) -> None:
        """``send_action_async``."""
        say(ORDERS, f"→ {action_type} {json.dumps(data)} (fire-and-forget), not waiting")
        self.sent["fire-and-forget"] += 1
        await self.redis_client.send_action_async(DomainAction(action_type=action_type, data=data))

    async def request(self, action_type: str, data: dict[str, Any]) -> DomainActionResponse | None:
        """``send_action_pseudo_sync``: send, then wait for the reply."""
        say(ORDERS, f"→ {action_type} {json.dumps(data)} (pseudo-sync), "
                    f"waiting ≤{REPLY_TIMEOUT_S:.0f}s for the reply…")
        self.sent["pseudo-sync"] += 1
        response = await self.redis_client.send_action_pseudo_sync(
            DomainAction(action_type=action_type, data=data), timeout=REPLY_TIMEOUT_S
        )
        if response is None:
            self.replies["timeout"] += 1
            say(ORDERS, "← no reply within the timeout (None)")
        elif response.success:
            self.replies["success"] += 1
        else:
            self.replies["error"] += 1
        return response

    async def with_callback(self, action_type: str, data: dict[str, Any], context: str) -> None:
        """``send_action_async_with_callback``: the answer comes back as a new action."""
        say(ORDERS, f"→ {action_type} {json.dumps(data)} (with callback {RESERVATION_DONE}, "
                    f"context {context}), not waiting")
        self.sent["with-callback"] += 1
        await self.redis_client.send_action_async_with_callback(
            DomainAction(action_type=action_type, data=data), RESERVATION_DONE, context
        )


async def scenario(orders: OrdersService) -> None:
    """The demo's story, one numbered step per feature."""
    orders.title("send_action_async — fire-and-forget: restock 4 gadgets")
    await orders.fire_and_forget(RESTOCK, {"sku": "gadget", "quantity": 4})

    orders.title("send_action_pseudo_sync — request/reply: read the stock levels")
    reply = await orders.request(LEVELS, {})
    levels = reply.data.get("levels", {}) if reply is not None and reply.success else {}
    shown = ", ".join(f"{sku}={n}" for sku, n in sorted(levels.items()))
    say(ORDERS, f"← success: {shown}  (so the restock sent before was applied)")
    orders.expect(levels == {"widget": 5, "gadget": 5}, f"levels {levels}")

    orders.title("send_action_pseudo_sync — request/reply: reserve 2 widgets")
    reply = await orders.request(RESERVE, {"sku": "widget", "quantity": 2})
    if reply is not None and reply.success:
        say(ORDERS, f"← success, reserved {reply.data['reserved']} "
                    f"({reply.data['left']} widget left)")
    orders.expect(reply is not None and reply.success and reply.data.get("left") == 3,
                  f"reply {reply}")

    orders.title("send_action_pseudo_sync — a request the handler rejects: reserve 10 widgets")
    reply = await orders.request(RESERVE, {"sku": "widget", "quantity": 10})
    if reply is not None and reply.error is not None:
        error = reply.error
        say(ORDERS, f"← error response (success=False): {error.error_type} "
                    f"[{error.error_code}] {error.message}")
    orders.expect(reply is not None and reply.error is not None
                  and reply.error.error_code == "out_of_stock", f"reply {reply}")

    orders.title("send_action_async_with_callback — reserve 3 gadgets, answer comes back later")
    await orders.with_callback(RESERVE, {"sku": "gadget", "quantity": 3}, "order-1003")
    try:
        callback = await asyncio.wait_for(orders.callbacks.get(), REPLY_TIMEOUT_S)
    except TimeoutError:
        orders.expect(False, "no callback arrived")
    else:
        orders.expect(callback.metadata.get("success") is True
                      and callback.data.get("left") == 2, f"callback {callback.data}")

    orders.title("poison message — data that can never be valid goes to the dead-letter stream")
    await orders.fire_and_forget(RESERVE, {"sku": "widget", "quantity": "lots"})
    reply = await orders.request(DEAD_LETTERS, {"min_count": 1})
    entries = reply.data.get("entries", []) if reply is not None and reply.success else []
    for entry in entries:
        why = re.sub(r"^data of \S+ \S+ ", "", entry["error_message"])
        say(ORDERS, short(f"← dead letter: {entry['action_type']}, reason={entry['reason']}, "
                          f"{entry['error_type']}: {why}", 160))
    orders.expect(len(entries) == 1, f"{len(entries)} dead letters")


def build_worker(orders: OrdersService, settings: CommonAppSettings) -> BaseWorker:
    """The orders worker: it receives the callbacks of its own requests."""
    worker = BaseWorker(
        settings, orders.redis_conn, worker_settings=worker_settings(concurrency=8)
    )

    @worker.handler(RESERVATION_DONE)
    async def reservation_completed(action: DomainAction, data: dict[str, Any]) -> None:
        meta = action.metadata
        outcome = (f"reserved {data.get('reserved')} {data.get('sku')}, {data.get('left')} left"
                   if meta.get("success") else f"failed: {meta.get('error')}")
        say(ORDERS, f"⇠ callback {action.action_type} from {action.origin_service} handled by "
                    f"orders' own worker (context {meta.get('callback_context')}): {outcome}")
        orders.callbacks_received += 1
        await orders.callbacks.put(action)

    return worker


async def run_scenario(orders: OrdersService) -> None:
    """Run the scenario and report it to the runner, whatever happens."""
    try:
        await scenario(orders)
    except Exception as exc:
        orders.expect(False, f"{type(exc).__name__}: {exc}")
    finally:
        write_report(f"{ORDERS}.done", {
            "steps": orders.step,
            "sent": dict(orders.sent),
            "replies": dict(orders.replies),
            "callbacks_received": orders.callbacks_received,
            "problems": orders.problems,
        })


async def main() -> int:
    """Start the worker, run the scenario, serve until SIGTERM, report."""
    settings = app_settings(ORDERS)
    setup_logging(ORDERS)
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        client = BaseRedisClient(ORDERS, redis, settings)
        orders = OrdersService(settings, client, redis)
        worker = build_worker(orders, settings)
        await worker.start()
        say(ORDERS, f"pid {os.getpid()}: worker up, handles {RESERVATION_DONE} "
                    "(callbacks come back to orders' own stream)")
        story = asyncio.create_task(run_scenario(orders))
        watchdog = asyncio.create_task(stop_when_orphaned(worker.request_stop))
        await worker.run()  # returns after SIGTERM and the worker's graceful stop()
        watchdog.cancel()
        story.cancel()
        await asyncio.gather(story, return_exceptions=True)
        await client.close()
        say(ORDERS, f"SIGTERM: worker drained and stopped ({worker.stats.handled} handled)")
        write_report(ORDERS, {
            "stats": dataclasses.asdict(worker.stats),
            "callbacks_received": orders.callbacks_received,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(run_service(ORDERS, main()))
