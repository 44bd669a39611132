"""A Node.js service (ioredis, ajv) against real actionbus workers and clients.

``foreign.js`` plays a service in another language using only docs/wire-format.md: it
sends each pattern to a Python worker, answers a Python client's requests and callbacks,
sends the spec's malformed cases, and validates every message it receives against the
committed JSON Schemas. Key names are passed in from ``QueueManager``, never built in JS.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel

from actionbus import (
    ActionRejected,
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    InvalidReply,
    QueueManager,
    WorkerSettings,
)
from actionbus.partitions import partition_for_key
from actionbus.schema import address_parameters, asyncapi_document

HERE = Path(__file__).parent
NODE, NPM = shutil.which("node"), shutil.which("npm")
UNICODE = "ñandú 🐘 日本語 \u0000 \"quoted\" \\ " * 2500  # ~100 KB of UTF-8


@pytest.fixture(scope="session")
def node_suite() -> Path:
    """``npm ci`` the pinned client into tests/conformance/node_modules (once per change)."""
    if NODE is None or NPM is None:
        reason = ("Node.js and npm are not installed (Debian: apt-get install nodejs npm): "
                  "the wire conformance suite cannot run")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    marker = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                       check=True, timeout=300, capture_output=True)
    return HERE / "foreign.js"


async def _eventually(check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.02)):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def _fast(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(**{"block_ms": 100, "retry_backoff_base_s": 0.01,
                             "retry_backoff_max_s": 0.05, "shutdown_grace_s": 1.0, **overrides})


class Node:
    """Runs ``foreign.js`` commands against the test Redis."""

    def __init__(self, script: Path, redis_url: str) -> None:
        self.script, self.redis_url = script, redis_url

    async def __call__(self, command: str, **config: Any) -> Any:
        assert NODE is not None
        proc = await asyncio.create_subprocess_exec(
            NODE, str(self.script), command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        payload = json.dumps({"redis_url": self.redis_url, **config}).encode()
        out, err = await asyncio.wait_for(proc.communicate(payload), 60)
        assert proc.returncode == 0, err.decode()[-3000:]
        return json.loads(out)


class Reserve(BaseModel):
    sku: str
    quantity: int


class Service:
    """A Python ``inventory`` worker (what it handled is recorded) and an ``orders`` side."""

    def __init__(self, conn: Any, make_settings: Callable[..., CommonAppSettings]) -> None:
        self.handled: dict[str, DomainAction] = {}
        self.worker = BaseWorker(make_settings(service_name="inventory"), conn,
                                 worker_settings=_fast(max_deliveries=2))
        self.orders = BaseWorker(make_settings(service_name="orders"), conn,
                                 worker_settings=_fast())
        self.client = BaseRedisClient("orders", conn, make_settings(service_name="orders"))
        self.qm: QueueManager = self.worker.queue_manager
        w = self.worker

        @w.handler("inventory.stock.reserve", data_model=Reserve)
        async def reserve(action: DomainAction, data: Reserve) -> dict[str, Any]:
            self.handled[str(action.action_id)] = action
            return {"sku": data.sku, "reserved": data.quantity}

        @w.handler("inventory.stock.note")
        async def note(action: DomainAction, data: dict[str, Any]) -> None:
            self.handled[str(action.action_id)] = action

        @w.handler("inventory.stock.fail")
        async def fail(action: DomainAction, data: dict[str, Any]) -> None:
            raise ActionRejected("out of stock", error_code="4001")

        @w.handler("inventory.stock.flaky")
        async def flaky(action: DomainAction, data: dict[str, Any]) -> None:
            raise RuntimeError("always fails")

        @self.orders.handler("orders.invoice.created")
        async def created(action: DomainAction, data: dict[str, Any]) -> None:
            self.handled[str(action.action_id)] = action

    async def dead_letters(self, node: Node, count: int, timeout: float = 20) -> dict[str, Any]:
        """The first ``count`` dead letters (validated by Node), by original entry id."""
        found = await node("read", stream=self.qm.get_dead_letter_stream("inventory"),
                           kind="dead-letter", count=count, timeout=timeout)
        return {e["message"]["original_id"]: e for e in found["entries"]}


@pytest_asyncio.fixture
async def svc(conn: Any, make_settings: Callable[..., CommonAppSettings]
              ) -> AsyncIterator[Service]:
    service = Service(conn, make_settings)
    await service.worker.start()
    await service.orders.start()
    yield service
    await service.client.close()
    await service.worker.stop(grace=0.5)
    await service.orders.stop(grace=0.5)


@pytest.fixture
def node(node_suite: Path, redis_url: str) -> Node:
    return Node(node_suite, redis_url)


def _assert_valid(check: dict[str, Any]) -> None:
    assert check["valid"], f"{check['kind']} violates its schema: {check['errors']}"


# --- Node sends, Python handles ---------------------------------------------------------

async def test_fire_and_forget_from_node_arrives_byte_exact(svc: Service, node: Node) -> None:
    """A Node action with 100 KB of Unicode reaches the Python handler unchanged."""
    sent = await node("call", stream=svc.worker.stream,
                      action={"action_type": "inventory.stock.note", "data": {"t": UNICODE}})
    action = await _eventually(lambda: svc.handled.get(sent["sent"]["action_id"]), timeout=10)
    assert action.data == {"t": UNICODE}


async def test_ordered_actions_from_node_run_in_order(
    conn: Any, make_settings: Callable[..., CommonAppSettings], node: Node
) -> None:
    """Node picks an ordering key's partition with zlib.crc32 % N, as Python does, and the
    Python workers (partitions=3) handle each key's actions in the order Node sent them."""
    seen: dict[str, list[int]] = {}
    worker = BaseWorker(make_settings(service_name="ledger", partitions={"ledger": 3}), conn,
                        worker_settings=_fast())

    @worker.handler("ledger.entry.post")
    async def post(action: DomainAction, data: dict[str, Any]) -> None:
        seen.setdefault(data["key"], []).append(data["n"])

    keys = ["order-42", "käse", "k-1", "k-2", "k-3"]
    qm = worker.queue_manager
    await worker.start()
    try:
        result = await node("ordered", keys=keys, per_key=5, action_type="ledger.entry.post",
                            streams=[qm.get_ordered_stream("ledger", k) for k in range(3)])
        assert result["partitions"] == {key: partition_for_key(key, 3) for key in keys}
        await _eventually(lambda: sum(map(len, seen.values())) == 25, timeout=20)
        assert seen == {key: list(range(5)) for key in keys}
    finally:
        await worker.stop(grace=0.5)


async def test_pseudo_sync_from_node_gets_its_reply(svc: Service, node: Node) -> None:
    """A Node request on a response list gets its reply, correlated, with a new action_id."""
    result = await node("call", stream=svc.worker.stream,
                        reply_queue=svc.qm.get_response_queue("node", "req-1"),
                        action={"action_type": "inventory.stock.reserve", "correlation_id": "c1",
                                "data": {"sku": "A1", "quantity": 2}})
    reply = result["reply"]
    assert reply["correlation_id"] == "c1"
    assert reply["success"] is True
    assert reply["data"] == {"sku": "A1", "reserved": 2}
    assert reply["action_id"] != result["sent"]["action_id"]


async def test_success_reply_matches_the_schema(svc: Service, node: Node) -> None:
    """A success reply carries every documented field (strict schema)."""
    result = await node("call", stream=svc.worker.stream,
                        reply_queue=svc.qm.get_response_queue("node", "req-2"),
                        action={"action_type": "inventory.stock.reserve",
                                "data": {"sku": "A1", "quantity": 1}})
    _assert_valid(result["check"])


async def test_uppercase_action_id_is_echoed_as_correlation(svc: Service, node: Node) -> None:
    """Without correlation_id, the reply correlates on the action_id exactly as sent."""
    raw_id = "9F3C1E2A-4B5D-4E6F-8A7B-0C1D2E3F4A5B"
    result = await node("call", stream=svc.worker.stream, raw_action_id=raw_id,
                        reply_queue=svc.qm.get_response_queue("node", "req-3"),
                        action={"action_type": "inventory.stock.reserve",
                                "data": {"sku": "A1", "quantity": 1}})
    assert result["reply"]["correlation_id"] == raw_id


async def test_error_reply_to_node_matches_the_schema(svc: Service, node: Node) -> None:
    """A failed pseudo-sync request gets success=false and a full, valid error object."""
    result = await node("call", stream=svc.worker.stream,
                        reply_queue=svc.qm.get_response_queue("node", "req-4"),
                        action={"action_type": "inventory.stock.fail", "correlation_id": "c4"})
    _assert_valid(result["check"])
    assert result["reply"]["success"] is False
    assert result["reply"]["error"] == {"error_type": "ActionRejected", "error_code": "4001",
                                        "message": "out of stock", "details": None}


@pytest.mark.parametrize(("action_type", "success"), [
    ("inventory.stock.reserve", True), ("inventory.stock.fail", False)])
async def test_callback_to_node_matches_the_schema(
    svc: Service, node: Node, action_type: str, success: bool
) -> None:
    """A callback reaches Node's stream, schema-valid, with context, ids and one error shape."""
    node_stream = svc.qm.get_service_action_stream("node")
    result = await node("call", stream=svc.worker.stream, action={
        "action_type": action_type, "origin_service": "node", "correlation_id": "c5",
        "callback_action_type": "node.stock.answered", "callback_queue_name": node_stream,
        "metadata": {"callback_context": "ctx-5"}, "data": {"sku": "A1", "quantity": 3}})
    got = await node("read", stream=node_stream, kind="callback", count=1)
    callback = got["entries"][0]
    _assert_valid(callback["check"])
    message = callback["message"]
    assert message["action_type"] == "node.stock.answered"
    assert message["correlation_id"] == "c5"
    assert message["metadata"]["response_to_action_id"] == result["sent"]["action_id"]
    assert message["metadata"]["callback_context"] == "ctx-5"
    assert message["metadata"]["success"] is success
    if not success:
        assert message["metadata"]["error"]["error_code"] == "4001"


# --- Python sends, Node handles ---------------------------------------------------------

async def test_node_answers_a_python_pseudo_sync_call(svc: Service, node: Node) -> None:
    """Node reads a schema-valid Python request and its reply completes the call."""
    serve = asyncio.create_task(node(
        "serve", stream=svc.qm.get_service_action_stream("billing"), group="billing",
        service="billing", count=1, answers={"billing.invoice.create": {
            "reply": {"data": {"invoice": "F-1"}}}}))
    response = await svc.client.send_action_pseudo_sync(
        DomainAction(action_type="billing.invoice.create", data={"n": 1}), timeout=20)
    served = (await serve)["served"]
    _assert_valid(served[0]["check"])
    assert response is not None
    assert response.success
    assert response.data == {"invoice": "F-1"}


async def test_python_reads_a_tolerant_node_error_reply(svc: Service, node: Node) -> None:
    """A Node error reply with data null and a numeric error_code is read, code as text."""
    raw = ('{"correlation_id":"$CORRELATION_ID","action_type_response_to":"billing.x.y",'
           '"success":false,"data":null,"error":{"error_type":"Nope","error_code":4001,'
           '"message":"m"}}')
    serve = asyncio.create_task(node(
        "serve", stream=svc.qm.get_service_action_stream("billing"), group="billing",
        service="billing", count=1, answers={"billing.x.y": {"raw": raw}}))
    response = await svc.client.send_action_pseudo_sync(
        DomainAction(action_type="billing.x.y"), timeout=20)
    await serve
    assert response is not None
    assert response.error is not None
    assert (response.success, response.data, response.error.error_code) == (False, {}, "4001")


async def test_invalid_node_reply_fails_the_call_at_once(svc: Service, node: Node) -> None:
    """A reply that breaks the spec reaches the caller as InvalidReply, not a timeout."""
    raw = '{"correlation_id":"$CORRELATION_ID","success":false}'
    serve = asyncio.create_task(node(
        "serve", stream=svc.qm.get_service_action_stream("billing"), group="billing",
        service="billing", count=1, answers={"billing.x.bad": {"raw": raw}}))
    try:
        with pytest.raises(InvalidReply) as caught:
            await svc.client.send_action_pseudo_sync(
                DomainAction(action_type="billing.x.bad"), timeout=3)
    finally:
        await serve
    assert caught.value.raw.startswith('{"correlation_id"')


async def test_node_answers_a_python_callback_request(svc: Service, node: Node) -> None:
    """Node's callback, built by the spec, reaches the Python caller with its context."""
    serve = asyncio.create_task(node(
        "serve", stream=svc.qm.get_service_action_stream("billing"), group="billing",
        service="billing", count=1, answers={"billing.invoice.create": {
            "data": {"invoice": "F-2"}}}))
    await svc.client.send_action_async_with_callback(
        DomainAction(action_type="billing.invoice.create"), "orders.invoice.created",
        callback_context="ctx-9")
    served = (await serve)["served"][0]
    _assert_valid(served["check"])
    _assert_valid(served["callback_check"])
    callback = await _eventually(lambda: svc.handled.get(served["callback"]["action_id"]),
                                 timeout=10)
    assert callback.metadata["callback_context"] == "ctx-9"
    assert callback.data == {"invoice": "F-2"}


async def test_python_fire_and_forget_matches_the_schema(svc: Service, node: Node) -> None:
    """An action a Python client sends carries every documented field (strict schema)."""
    await svc.client.send_action_async(DomainAction(action_type="billing.x.y", data={"a": 1}))
    got = await node("read", stream=svc.qm.get_service_action_stream("billing"),
                     kind="domain-action", count=1)
    _assert_valid(got["entries"][0]["check"])


# --- the rejection table of docs/wire-format.md ------------------------------------------

def _cases(qm: QueueManager) -> dict[str, tuple[dict[str, str], str, str]]:
    """Malformed entries Node sends: case -> (stream fields, reason, error_type)."""
    def action(**fields: Any) -> dict[str, str]:
        return {"data": json.dumps({"action_type": "inventory.stock.note", **fields})}

    return {
        "no data field": ({"payload": "{}"}, "malformed", "MissingField"),
        "not JSON": ({"data": "{nope"}, "malformed", "InvalidJSON"),
        "JSON but not an object": ({"data": "[1,2]"}, "malformed", "InvalidAction"),
        "no action_type": ({"data": '{"data":{}}'}, "malformed", "InvalidAction"),
        "action_type without a dot": (
            {"data": '{"action_type":"inventory"}'}, "malformed", "InvalidAction"),
        "data not an object": (action(data=[1]), "malformed", "InvalidAction"),
        "timestamp not a date": (action(timestamp="yesterday"), "malformed", "InvalidAction"),
        "timestamp as a boolean": (action(timestamp=True), "malformed", "InvalidAction"),
        "expires_at overflowing UTC": (
            action(expires_at="9999-12-31T23:59:59-14:00"), "malformed", "InvalidAction"),
        "callback to a service other than the origin": (
            action(origin_service="node", callback_action_type="payroll.salary.set",
                   callback_queue_name=qm.get_service_action_stream("payroll")),
            "callback_not_allowed", "CallbackNotAllowed"),
        "reply target outside the namespace": (
            action(callback_queue_name="elsewhere:prod:x:responses:y"),
            "malformed", "InvalidReplyTarget"),
        "pseudo-sync target not a response list": (
            action(callback_queue_name=qm.get_service_action_stream("node")),
            "malformed", "InvalidReplyTarget"),
        "callback target not an action stream": (
            action(callback_action_type="node.x.done",
                   callback_queue_name=qm.get_response_queue("node", "x")),
            "malformed", "InvalidReplyTarget"),
        "data does not match the handler's model": (
            {"data": json.dumps({"action_type": "inventory.stock.reserve",
                                 "data": {"sku": 1}})}, "rejected", "ActionRejected"),
        "handler rejects the action": (
            {"data": '{"action_type":"inventory.stock.fail"}'}, "rejected", "ActionRejected"),
        "handler keeps failing": (
            {"data": '{"action_type":"inventory.stock.flaky"}'}, "max_deliveries",
            "RuntimeError"),
    }


async def test_every_malformed_case_is_dead_lettered_with_its_reason(
    svc: Service, node: Node
) -> None:
    """Each rejection-table case is buried whole with its reason; the worker keeps going."""
    cases = _cases(svc.qm)
    sent = await node("xadd", entries=[{"stream": svc.worker.stream, "fields": fields}
                                       for fields, _, _ in cases.values()])
    letters = await svc.dead_letters(node, len(cases))
    for (name, (fields, reason, error_type)), entry_id in zip(
            cases.items(), sent["ids"], strict=True):
        letter = letters.get(entry_id)
        assert letter is not None, f"{name}: no dead letter"
        _assert_valid(letter["check"])
        message = letter["message"]
        assert (message["reason"], message["error_type"]) == (reason, error_type), name
        assert message["data"] == fields.get("data", ""), name
    after = await node("call", stream=svc.worker.stream,
                       reply_queue=svc.qm.get_response_queue("node", "after"),
                       action={"action_type": "inventory.stock.reserve",
                               "data": {"sku": "B", "quantity": 1}})
    assert after["reply"]["success"] is True


async def test_unknown_action_type_is_dead_lettered_at_once(svc: Service, node: Node) -> None:
    """An action type no handler knows is buried at once with reason unknown_action_type."""
    sent = await node("xadd", entries=[{"stream": svc.worker.stream,
                                        "fields": {"data": '{"action_type":"inventory.x.y"}'}}])
    letter = (await svc.dead_letters(node, 1))[sent["ids"][0]]
    assert (letter["message"]["reason"], letter["message"]["deliveries"]) == (
        "unknown_action_type", "1")


async def test_oversize_entry_is_dead_lettered(svc: Service, node: Node) -> None:
    """An entry above max_payload_bytes is buried with reason oversize, not handled."""
    big = json.dumps({"action_type": "inventory.stock.note", "data": {"x": "y" * 1_100_000}})
    sent = await node("xadd", entries=[{"stream": svc.worker.stream, "fields": {"data": big}}])

    async def settled() -> bool:
        if any(len(a.data.get("x", "")) > 1000 for a in svc.handled.values()):
            return True
        return bool(await svc.worker.dead_letters.count())

    await _eventually(settled, timeout=10)
    letters = await svc.dead_letters(node, 1, timeout=1)
    assert letters.get(sent["ids"][0], {}).get("message", {}).get("reason") == "oversize"


# --- the spec itself ----------------------------------------------------------------------

SPEC = (HERE.parent.parent / "docs" / "wire-format.md").read_text()


async def test_spec_examples_match_the_schemas(node: Node) -> None:
    """Every JSON example of docs/wire-format.md is valid against its schema, checked by ajv."""
    found = re.findall(r"<!-- wire-example: ([\w-]+) -->\n```json\n(.*?)```", SPEC, re.S)
    assert found
    result = await node("validate", messages=[
        {"kind": kind, "message": json.loads(text)} for kind, text in found])
    for check in result["checks"]:
        _assert_valid(check)


async def test_schemas_refuse_what_writers_must_not_emit(node: Node) -> None:
    """ajv refuses a reply missing trace_id, a '+00:00' timestamp and an uppercase id."""
    good = {"action_id": "9a1d6a2b-5f0e-4d4b-8c3a-1e2f3a4b5c6d", "correlation_id": "c",
            "trace_id": None, "action_type_response_to": "a.b", "success": True,
            "timestamp": "2026-01-02T03:04:05.000000Z", "data": {}, "error": None}
    bad = [
        {k: v for k, v in good.items() if k != "trace_id"},
        {**good, "timestamp": "2026-01-02T03:04:05.000000+00:00"},
        {**good, "action_id": good["action_id"].upper()},
    ]
    result = await node("validate", messages=[
        {"kind": "domain-action-response", "message": m} for m in [good, *bad]])
    assert [c["valid"] for c in result["checks"]] == [True, False, False, False]


async def test_asyncapi_document_is_valid_asyncapi_3(svc: Service, node: Node) -> None:
    """The generated AsyncAPI document, with plain or hash-tagged keys, passes the 3.0.0 schema."""
    doc = asyncapi_document(svc.worker)
    tagged = copy.deepcopy(doc)
    address = "actionbus:dev:{inventory}:streams:main"
    tagged["channels"]["actions"] = {**tagged["channels"]["actions"], "address": address,
                                     **address_parameters(address)}
    assert tagged["channels"]["actions"]["parameters"]["inventory"]["enum"] == ["inventory"]
    broken = {k: v for k, v in doc.items() if k != "info"}
    result = await node("asyncapi", documents=[doc, tagged, broken])
    for check in result["checks"][:2]:
        _assert_valid(check)
    assert result["checks"][2]["valid"] is False


def test_rejection_table_lists_every_case() -> None:
    """Each (reason, error_type) the suite provokes is a row of the spec's rejection table."""
    table = SPEC.split("## Rejection table", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.split("|")[2:4]]
            for line in table.splitlines() if line.startswith("| ")]
    for name, (_, reason, error_type) in _cases(QueueManager("dev")).items():
        assert any(r == f"`{reason}`" and (f"`{error_type}`" in e or "exception's class" in e)
                   for r, e in rows), f"{name}: {reason}/{error_type} not in the table"
    assert ["`unknown_action_type`", "`UnknownActionType`"] in rows
    assert ["`oversize`", "`PayloadTooLarge`"] in rows
    assert ["`callback_not_allowed`", "`CallbackNotAllowed`"] in rows
