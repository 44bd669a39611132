"""BaseRedisClient: the three send patterns, batching, size limit and bad input."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from actionbus import (
    BaseRedisClient,
    CommonAppSettings,
    ConfigurationError,
    DomainAction,
    DomainActionResponse,
    InvalidNameError,
    PayloadTooLargeError,
    QueueManager,
    RedisManager,
    SendError,
)

pytestmark = pytest.mark.backends

Settings = Callable[..., CommonAppSettings]
QM = QueueManager("dev")


async def _entries(redis: Any, service: str) -> list[dict[str, Any]]:
    """The decoded ``data`` of every entry on a service's stream, after checking the layout."""
    result = []
    for _entry_id, fields in await redis.xrange(QM.get_service_action_stream(service)):
        assert set(fields) == {b"data"}
        result.append(json.loads(fields[b"data"]))
    return result


async def _keys(redis: Any, pattern: str = "*") -> list[bytes]:
    return [key async for key in redis.scan_iter(match=pattern)]


async def _acknowledged(redis: Any, worker: Any) -> bool:
    summary: Any = await redis.xpending(worker.stream, worker.group)
    return int(summary["pending"]) == 0


def test_constructor_seed_signature(conn: Any, make_settings: Settings) -> None:
    """BaseRedisClient(service_name=, redis_client=, settings=) as in seed 000."""
    settings = make_settings(environment="staging", key_prefix="nooble")
    client = BaseRedisClient(service_name="orders", redis_client=conn, settings=settings)
    assert client.service_name == "orders"
    assert client.redis is conn
    assert client.queue_manager.get_service_action_stream("x") == "nooble:staging:{x}:streams:main"
    assert client.response_queue.startswith("nooble:staging:{orders}:responses:")


@pytest.mark.parametrize("name", ["", "a:b", "a.b", "with space", "x" * 65])
def test_constructor_rejects_bad_service_name(
    conn: Any, make_settings: Settings, name: str
) -> None:
    """An invalid service_name is a ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError, match="service name"):
        BaseRedisClient(name, conn, make_settings())


def test_constructor_rejects_missing_redis_client(make_settings: Settings) -> None:
    """redis_client=None is a ConfigurationError telling where to get one."""
    with pytest.raises(ConfigurationError,
                       match=r"^BaseRedisClient needs .*RedisManager\.get_client\(\)$"):
        BaseRedisClient("orders", None, make_settings())  # type: ignore[arg-type]


def test_constructor_accepts_queue_manager(conn: Any, make_settings: Settings) -> None:
    """An explicit queue_manager decides the key names."""
    qm = QueueManager("qa", "custom")
    client = BaseRedisClient("orders", conn, make_settings(), queue_manager=qm)
    assert client.queue_manager is qm
    assert client.response_queue.startswith("custom:qa:{orders}:responses:")


async def test_send_action_async_writes_data_field(bus: Any) -> None:
    """send_action_async XADDs the action's JSON under field ``data`` to the target's stream."""
    client = bus.client("orders")
    action = DomainAction(action_type="inventory.item.reserve", data={"sku": "A1", "qty": 2})
    entry_id = await client.send_action_async(action)
    assert isinstance(entry_id, str)
    assert "-" in entry_id
    [sent] = await _entries(bus.redis, "inventory")
    stamped = action.model_copy(update={"origin_service": "orders"})
    assert sent == json.loads(stamped.model_dump_json(exclude_none=True))
    assert sent["origin_service"] == "orders"
    assert DomainAction.model_validate(sent) == stamped
    assert action.origin_service is None  # the caller's object is not changed


async def test_send_action_async_honours_target_service(bus: Any) -> None:
    """target_service sends to that service's stream instead of action_type's first segment."""
    client = bus.client("orders")
    await client.send_action_async(
        DomainAction(action_type="inventory.item.reserve", target_service="inventory-v2")
    )
    assert await bus.redis.xlen(QM.get_service_action_stream("inventory")) == 0
    assert len(await _entries(bus.redis, "inventory-v2")) == 1


async def test_send_action_async_keeps_given_origin(bus: Any) -> None:
    """An origin_service already set on the action is not overwritten."""
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inv.x.y", origin_service="gateway"))
    [sent] = await _entries(bus.redis, "inv")
    assert sent["origin_service"] == "gateway"


async def test_send_actions_async_batch(bus: Any) -> None:
    """send_actions_async sends all actions, in order, returning their entry ids."""
    client = bus.client("orders")
    services = ["inv", "bill", "inv"] * 10  # on a cluster: many entries per node, in order
    actions = [DomainAction(action_type=f"{svc}.item.n", data={"i": i})
               for i, svc in enumerate(services)]
    ids = await client.send_actions_async(actions)
    assert len(ids) == 30
    assert all(isinstance(i, str) for i in ids)
    inv = [i for i, svc in enumerate(services) if svc == "inv"]
    assert [e["data"]["i"] for e in await _entries(bus.redis, "inv")] == inv
    assert [e["data"]["i"] for e in await _entries(bus.redis, "bill")] == list(range(1, 30, 3))
    inv_ids = [ids[i] for i in inv]
    assert sorted(inv_ids, key=lambda e: tuple(map(int, e.split("-")))) == inv_ids
    assert await client.send_actions_async([]) == []


async def test_send_actions_async_validates_all_before_sending(
    bus: Any, make_settings: Settings
) -> None:
    """If one action of a batch is bad, nothing of the batch is sent."""
    client = bus.client("orders", max_payload_bytes=1024)
    good = DomainAction(action_type="inv.item.a")
    too_big = DomainAction(action_type="inv.item.b", data={"blob": "x" * 2000})
    with pytest.raises(PayloadTooLargeError):
        await client.send_actions_async([good, too_big])
    with pytest.raises(TypeError, match="expected a DomainAction"):
        await client.send_actions_async([good, {"action_type": "inv.item.c"}])  # type: ignore[list-item]
    assert await bus.redis.xlen(QM.get_service_action_stream("inv")) == 0


async def test_payload_too_large_sends_nothing(bus: Any) -> None:
    """An action above max_payload_bytes raises PayloadTooLargeError and nothing is written."""
    client = bus.client("orders", max_payload_bytes=1024)
    action = DomainAction(action_type="inv.item.put", data={"blob": "x" * 2000})
    with pytest.raises(PayloadTooLargeError, match=r"max_payload_bytes=1024; nothing was sent"):
        await client.send_action_async(action)
    assert issubclass(PayloadTooLargeError, SendError)
    assert await _keys(bus.redis) == []


async def test_payload_limit_counts_utf8_bytes(bus: Any) -> None:
    """The size limit counts encoded bytes, so multi-byte text cannot slip through."""
    client = bus.client("orders", max_payload_bytes=1024)
    with pytest.raises(PayloadTooLargeError):
        await client.send_action_async(DomainAction(action_type="inv.a", data={"t": "é" * 450}))
    await client.send_action_async(DomainAction(action_type="inv.a", data={"t": "e" * 450}))
    assert await bus.redis.xlen(QM.get_service_action_stream("inv")) == 1


@pytest.mark.parametrize("bad", [{"action_type": "inv.item.x"}, None, "inv.item.x"])
async def test_send_action_async_rejects_non_actions(bus: Any, bad: Any) -> None:
    """send_action_async with something other than a DomainAction is a clear TypeError
    naming the type it got."""
    client = bus.client("orders")
    with pytest.raises(TypeError, match=f"expected a DomainAction, got {type(bad).__name__};"):
        await client.send_action_async(bad)


async def test_send_action_pseudo_sync_rejects_non_actions(bus: Any) -> None:
    """send_action_pseudo_sync with a dict is a clear TypeError."""
    client = bus.client("orders")
    with pytest.raises(TypeError, match="expected a DomainAction"):
        await client.send_action_pseudo_sync({"action_type": "inv.item.x"}, timeout=1)  # type: ignore[arg-type]


async def test_send_with_callback_rejects_non_actions(bus: Any) -> None:
    """send_action_async_with_callback with a dict is a clear TypeError."""
    client = bus.client("orders")
    with pytest.raises(TypeError, match="expected a DomainAction"):
        await client.send_action_async_with_callback(
            {"action_type": "inv.item.x"}, "orders.item.done"  # type: ignore[arg-type]
        )


async def test_unvalidated_action_type_refused_before_redis(bus: Any) -> None:
    """An action built without validation whose target is not a service name is refused."""
    client = bus.client("orders")
    forged = DomainAction.model_construct(action_type="victim:key.x.y")
    with pytest.raises(InvalidNameError):
        await client.send_action_async(forged)
    assert await _keys(bus.redis) == []


async def test_action_type_changed_to_malformed_refused_before_redis(bus: Any) -> None:
    """Assigning a malformed action_type after construction is refused before anything is sent."""
    client = bus.client("orders")
    action = DomainAction(action_type="inv.item.x")
    # Either fix is fine: refuse the assignment, or refuse the send.
    with pytest.raises(ValueError, match="action_type"):  # noqa: PT012
        action.action_type = "inv.bad type!"
        await client.send_action_async(action)
    assert await _keys(bus.redis) == []


async def test_send_error_when_redis_is_down(fresh_redis_server: Any) -> None:
    """A send while Redis is unreachable raises SendError naming the action and stream."""
    settings = CommonAppSettings(
        _env_file=None, service_name="tests", redis_url=fresh_redis_server.url,
        redis_socket_connect_timeout=0.5,
    )
    async with RedisManager(settings) as manager:
        client = BaseRedisClient("orders", manager.get_client(), settings)
        fresh_redis_server.kill()
        action = DomainAction(action_type="inv.item.x")
        with pytest.raises(SendError, match=f"{action.action_id}.*inv}}:streams:main"):
            await client.send_action_async(action)
        with pytest.raises(SendError, match="batch of 1"):
            await client.send_actions_async([DomainAction(action_type="inv.item.x")])


async def test_pseudo_sync_returns_worker_response(bus: Any) -> None:
    """send_action_pseudo_sync returns the DomainActionResponse the target's worker sent."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"sku": data["sku"], "qty": 7}

    await worker.start()
    client = bus.client("orders")
    action = DomainAction(action_type="inventory.stock.get", data={"sku": "A1"}, trace_id="t1")
    response = await client.send_action_pseudo_sync(action, timeout=5)
    assert isinstance(response, DomainActionResponse)
    assert response.success
    assert response.error is None
    assert response.data == {"sku": "A1", "qty": 7}
    assert response.correlation_id == str(action.action_id)
    assert response.trace_id == "t1"
    assert response.action_type_response_to == "inventory.stock.get"
    assert action.callback_queue_name is None  # the caller's object is not changed
    assert action.expires_at is None


async def test_pseudo_sync_concurrent_calls_get_their_own_answers(bus: Any) -> None:
    """Many concurrent pseudo-sync calls on one client each get the reply to their action."""
    worker = bus.worker("calc")

    @worker.handler("calc.num.double")
    async def double(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.01 * (data["n"] % 3))
        return {"n": data["n"] * 2}

    await worker.start()
    client = bus.client("orders")
    responses = await asyncio.gather(*(
        client.send_action_pseudo_sync(
            DomainAction(action_type="calc.num.double", data={"n": n}), timeout=5
        )
        for n in range(20)
    ))
    assert [r.data["n"] for r in responses if r is not None] == [n * 2 for n in range(20)]


async def test_pseudo_sync_timeout_returns_none_and_leaves_no_key(
    bus: Any, eventually: Any
) -> None:
    """Without an answer the call returns None after the timeout; close() leaves no key behind."""
    client = bus.client("orders")
    started = time.monotonic()
    assert await client.send_action_pseudo_sync(
        DomainAction(action_type="nobody.is.home"), timeout=0.3
    ) is None
    assert 0.25 <= time.monotonic() - started < 2
    worker = bus.worker("nobody", clock_skew_s=0)
    handled: list[DomainAction] = []

    @worker.handler("nobody.is.home")
    async def late(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append(action)

    await worker.start()
    await eventually(lambda: worker.stats.expired_skipped == 1)  # a barrier, not a sleep
    await eventually(lambda: _acknowledged(bus.redis, worker))
    await client.close()
    assert handled == []
    assert await _keys(bus.redis, "*:responses:*") == []


async def test_pseudo_sync_late_reply_expires(bus: Any, eventually: Any) -> None:
    """A reply finished after the caller gave up is never pushed (no LPUSH reaches Redis),
    and close() leaves no response list."""
    worker = bus.worker("slow", clock_skew_s=0)
    release = asyncio.Event()

    @worker.handler("slow.op.run")
    async def slow(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"late": True}

    await worker.start()
    client = bus.client("orders")
    pushes = await _lpush_calls(bus.redis)
    assert await client.send_action_pseudo_sync(
        DomainAction(action_type="slow.op.run"), timeout=0.2
    ) is None
    release.set()  # the handler finishes only after its caller gave up
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: _acknowledged(bus.redis, worker))  # outputs go before the ack
    assert await _lpush_calls(bus.redis) == pushes
    await client.close()
    assert await _keys(bus.redis, "*:responses:*") == []


async def _lpush_calls(redis: Any) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


@pytest.mark.parametrize("timeout", [0, -1, None])
async def test_pseudo_sync_rejects_non_positive_timeout(bus: Any, timeout: Any) -> None:
    """timeout must be positive; nothing is sent otherwise."""
    client = bus.client("orders")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        await client.send_action_pseudo_sync(DomainAction(action_type="inv.a.b"), timeout=timeout)
    assert await _keys(bus.redis) == []


async def test_callback_routed_to_origin_handler(bus: Any, eventually: Any) -> None:
    """The callback is a DomainAction on the origin's stream, handled with callback_context."""
    billing = bus.worker("billing")

    @billing.handler("billing.invoice.create")
    async def create(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"invoice": "INV-1", "amount": data["amount"]}

    orders = bus.worker("orders")
    received: list[DomainAction] = []

    @orders.handler("orders.invoice.created")
    async def on_invoice(action: DomainAction, data: dict[str, Any]) -> None:
        received.append(action)

    await billing.start()
    await orders.start()
    client = bus.client("orders")
    action = DomainAction(action_type="billing.invoice.create", data={"amount": 10},
                          tenant_id="t1", trace_id="tr")
    await client.send_action_async_with_callback(action, "orders.invoice.created", "order-77")
    assert action.callback_action_type is None  # the caller's object is not changed
    assert action.callback_queue_name is None
    await eventually(lambda: received)
    [callback] = received
    assert callback.action_type == "orders.invoice.created"
    assert callback.data == {"invoice": "INV-1", "amount": 10}
    assert callback.metadata["callback_context"] == "order-77"
    assert callback.metadata["success"] is True
    assert callback.correlation_id == str(action.action_id)
    assert (callback.origin_service, callback.tenant_id, callback.trace_id) == (
        "billing", "t1", "tr",
    )


async def test_callback_is_durable_while_origin_is_down(bus: Any, eventually: Any) -> None:
    """A callback sent while the origin has no worker is handled when its worker starts."""
    billing = bus.worker("billing")

    @billing.handler("billing.invoice.create")
    async def create(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": 1}

    await billing.start()
    client = bus.client("orders")
    await client.send_action_async_with_callback(
        DomainAction(action_type="billing.invoice.create"), "orders.invoice.created"
    )
    await eventually(lambda: bus.redis.xlen(QM.get_service_action_stream("orders")))
    orders = bus.worker("orders")
    received: list[DomainAction] = []

    @orders.handler("orders.invoice.created")
    async def on_invoice(action: DomainAction, data: dict[str, Any]) -> None:
        received.append(action)

    await orders.start()
    await eventually(lambda: received)
    assert received[0].data == {"ok": 1}
    assert received[0].metadata["callback_context"] is None


async def test_callback_rejects_bad_event_name(bus: Any) -> None:
    """A callback_event_name that is not an action type is refused before sending."""
    client = bus.client("orders")
    with pytest.raises(ValueError, match=r"^callback_event_name 'not an action type' is not "
                                          r"valid: expected 'service\.entity\.verb'"):
        await client.send_action_async_with_callback(
            DomainAction(action_type="billing.x.y"), "not an action type"
        )
    assert await _keys(bus.redis) == []


async def test_close_is_idempotent_and_drops_response_list(bus: Any) -> None:
    """close() deletes the client's response list and may be called twice."""
    client = bus.client("orders")
    await bus.redis.lpush(client.response_queue, "x")
    await client.close()
    await client.close()
    assert await bus.redis.exists(client.response_queue) == 0


async def test_callback_send_honours_delay_at_priority_and_wait_replicas(bus: Any) -> None:
    """send_action_async_with_callback takes delay=/at= (the request waits in the target's
    delayed set), checks priority= before sending, and WAITs for wait_replicas."""
    from datetime import timedelta

    from actionbus import NotReplicatedError
    from actionbus.models.actions import utc_now

    client = bus.client("orders")
    qm = client.queue_manager
    delayed, stream = qm.get_delayed_set("inventory"), qm.get_service_action_stream("inventory")
    request = DomainAction(action_type="inventory.item.reserve")
    await client.send_action_async_with_callback(request, "orders.item.reserved", delay=3600)
    await client.send_action_async_with_callback(
        DomainAction(action_type="inventory.item.reserve"), "orders.item.reserved",
        at=utc_now() + timedelta(hours=1))
    assert (await bus.redis.zcard(delayed), await bus.redis.xlen(stream)) == (2, 0)
    with pytest.raises(InvalidNameError):
        await client.send_action_async_with_callback(request, "orders.item.reserved",
                                                     priority="urgent")
    with pytest.raises(NotReplicatedError,  # the test server has no replica
                       match=r"only 0 of 1 replica\(s\) confirmed it within 50 ms"):
        await client.send_action_async_with_callback(request, "orders.item.reserved",
                                                     wait_replicas=1, wait_timeout_ms=50)
    assert await bus.redis.xlen(stream) == 1


async def test_callback_request_carries_its_reply_address_and_correlation_id(bus: Any) -> None:
    """The request of send_action_async_with_callback carries on the wire the callback's
    action type, where it goes (this service's action stream) and a correlation id: the
    caller's, else the action id; the context travels in metadata."""
    client = bus.client("orders")
    first = DomainAction(action_type="inventory.item.reserve")
    second = DomainAction(action_type="inventory.item.reserve", correlation_id="corr-9")
    await client.send_action_async_with_callback(first, "orders.item.reserved", "ctx-1")
    await client.send_action_async_with_callback(second, "orders.item.reserved")
    sent = [DomainAction.model_validate_json(fields[b"data"]) for _, fields in
            await bus.redis.xrange(QM.get_service_action_stream("inventory"))]
    home = QM.get_service_action_stream("orders")
    assert [(a.callback_action_type, a.callback_queue_name, a.correlation_id) for a in sent] == [
        ("orders.item.reserved", home, str(first.action_id)),
        ("orders.item.reserved", home, "corr-9"),
    ]
    assert sent[0].metadata["callback_context"] == "ctx-1"


async def test_callback_context_with_key_syntax_is_refused(bus: Any) -> None:
    """A callback_context that could not be a key part is refused; nothing is sent."""
    client = bus.client("orders")
    with pytest.raises(InvalidNameError, match="context"):
        await client.send_action_async_with_callback(
            DomainAction(action_type="inventory.item.reserve"), "orders.item.reserved",
            "has space*")
    assert await _keys(bus.redis) == []


async def test_callback_request_with_a_priority_goes_to_that_lane(bus: Any) -> None:
    """send_action_async_with_callback(priority="high") to a target that reads lanes
    writes the request to its high lane, not to its main stream."""
    await bus.redis.set(QM.get_lanes_key("inventory"), "high,normal,low")
    client = bus.client("orders")
    entry_id = await client.send_action_async_with_callback(
        DomainAction(action_type="inventory.item.reserve"), "orders.item.reserved",
        priority="high")
    [(found, _)] = await bus.redis.xrange(QM.get_lane_stream("inventory", "high"))
    assert found.decode() == entry_id
    assert await bus.redis.exists(QM.get_service_action_stream("inventory")) == 0


async def test_a_send_delayed_by_zero_is_due_at_once(bus: Any) -> None:
    """delay=0 parks the action in the target's delayed set due now (by the server's
    clock), not later: its due time is not after the server's time read just after."""
    from datetime import timedelta

    client = bus.client("orders")
    delayed = QM.get_delayed_set("inventory")
    await client.send_action_async(DomainAction(action_type="inventory.item.add"), delay=0)
    await client.send_action_async(DomainAction(action_type="inventory.item.add"),
                                   delay=timedelta(0))
    seconds, micros = await bus.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    due = [score for _, score in await bus.redis.zrange(delayed, 0, -1, withscores=True)]
    assert len(due) == 2
    assert all(score <= now_ms for score in due)


async def test_pseudo_sync_request_asks_for_a_reply_not_a_callback(bus: Any) -> None:
    """send_action_pseudo_sync sends the request with this client's response list as reply
    address, no callback action type (even if the caller's action had one), and a
    correlation id: the caller's, else the action id."""
    client = bus.client("orders")
    plain = DomainAction(action_type="nobody.op.run", callback_action_type="orders.op.done")
    tagged = DomainAction(action_type="nobody.op.run", correlation_id="corr-7")
    # the timeout bounds the send too: long enough that a loaded machine still sends
    assert await client.send_action_pseudo_sync(plain, timeout=0.3) is None
    assert await client.send_action_pseudo_sync(tagged, timeout=0.3) is None
    sent = [DomainAction.model_validate_json(fields[b"data"]) for _, fields in
            await bus.redis.xrange(QM.get_service_action_stream("nobody"))]
    assert [(a.callback_action_type, a.callback_queue_name, a.correlation_id) for a in sent] == [
        (None, client.response_queue, str(plain.action_id)),
        (None, client.response_queue, "corr-7"),
    ]


async def test_a_batch_with_a_priority_passes_the_publish_layers(bus: Any) -> None:
    """send_actions_async(priority="high") runs each action through the publish layers
    added with use(), as a batch without a priority does."""
    from actionbus import PublishNext

    await bus.redis.set(QM.get_lanes_key("inventory"), "high,normal,low")
    client = bus.client("orders")
    seen: list[str] = []

    async def record(action: DomainAction, call_next: PublishNext) -> str:
        seen.append(str(action.action_id))
        return await call_next(action)

    client.use(record)
    batch = [DomainAction(action_type="inventory.item.add") for _ in range(2)]
    ids = await client.send_actions_async(batch, priority="high")
    assert seen == [str(action.action_id) for action in batch]
    assert len(await bus.redis.xrange(QM.get_lane_stream("inventory", "high"))) == len(ids) == 2


async def test_an_action_of_exactly_max_payload_bytes_is_sent(bus: Any) -> None:
    """The limit is inclusive: an action whose wire JSON is exactly max_payload_bytes long
    is sent; one byte more is refused."""
    from actionbus.clients.encoding import wire_json

    def sized(n: int) -> DomainAction:
        return DomainAction(action_type="inv.item.put", origin_service="orders",
                            data={"blob": "x" * n})

    limit = len(wire_json(sized(500)))
    client = bus.client("orders", max_payload_bytes=limit)
    with pytest.raises(PayloadTooLargeError):
        await client.send_action_async(sized(501))
    await client.send_action_async(sized(500))
    assert await bus.redis.xlen(QM.get_service_action_stream("inv")) == 1
