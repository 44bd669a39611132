"""Each role works under exactly its documented ACL; check_permissions names what is missing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from click.testing import CliRunner
from pydantic import BaseModel

from actionbus import BaseRedisClient, BaseWorker, CommonAppSettings, RedisManager
from actionbus.cli import main as cli_main
from actionbus.clients.state_manager import RedisStateManager
from actionbus.exceptions import PermissionsError
from actionbus.models.actions import DomainAction
from actionbus.permissions import OPTIONAL_COMMANDS, ROLE_COMMANDS, acl_setuser, check_permissions
from tests.conftest import fast_worker_settings

PASSWORD = "acl-Pw-123"
README = Path(__file__).resolve().parent.parent / "README.md"
# redis-py names its connection with CLIENT SETINFO and ignores a refusal; the worker
# skips its eviction-policy check (optional CONFIG GET) when refused.
HARMLESS = {"client|setinfo", "client", "config|get"}

Connect = Callable[..., Any]


def setuser(admin: Any, line: str) -> None:
    admin.execute_command(*line.split())


@pytest.fixture
def server(fresh_redis_server: Any) -> Any:
    """A server of the test's own, with one ACL user per role (required commands only)."""
    with fresh_redis_server.client() as admin:
        for role in ROLE_COMMANDS:
            setuser(admin, acl_setuser(role, password=PASSWORD, optional=False, check=False))
        admin.execute_command("ACL", "LOG", "RESET")
    return fresh_redis_server


def denied(server: Any) -> list[str]:
    """Commands or keys refused so far (ACL LOG), minus redis-py's harmless CLIENT SETINFO."""
    with server.client() as admin:
        entries = admin.acl_log(count=200)
    return [f"{e['username']}: {e['reason']} {e['object']}" for e in entries
            if e["object"] not in HARMLESS]  # fmt: skip


def settings_for(server: Any, role: str, service: str) -> CommonAppSettings:
    url = f"redis://actionbus-{role}:{PASSWORD}@127.0.0.1:{server.port}/0"
    return CommonAppSettings(_env_file=None, service_name=service, redis_url=url)


@pytest_asyncio.fixture
async def connect(server: Any) -> AsyncIterator[Connect]:
    """Open a client as a role's ACL user; everything is closed after the test."""
    managers: list[RedisManager] = []

    async def open_(role: str, service: str) -> tuple[Any, CommonAppSettings]:
        s = settings_for(server, role, service)
        manager = RedisManager(s)
        managers.append(manager)
        return await manager.initialize(), s

    yield open_
    for manager in managers:
        await manager.close()


async def test_client_and_worker_roles_run_all_three_patterns(
    server: Any, connect: Connect, eventually: Any
) -> None:
    """Send, pseudo-sync and callback work with client and worker users under their ACL only."""
    inv_redis, inv_settings = await connect("worker", "inventory")
    ord_redis, ord_settings = await connect("worker", "orders")
    cli_redis, cli_settings = await connect("client", "orders")
    # Required commands only: no +acl|whoami, so the start-up self-check is switched off
    # (it would be refused, and logged in ACL LOG, which this test asserts stays empty).
    quiet = fast_worker_settings(check_permissions=False)
    inventory = BaseWorker(inv_settings, inv_redis, worker_settings=quiet)
    orders = BaseWorker(ord_settings, ord_redis, worker_settings=quiet)
    seen: list[str] = []

    @inventory.handler("inventory.stock.count", idempotent=True)
    async def count(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        seen.append(action.action_type)
        return {"sku": data["sku"], "count": 3}

    @orders.handler("orders.stock.counted")
    async def counted(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(action.action_type)

    await inventory.start()
    await orders.start()
    client = BaseRedisClient("orders", cli_redis, cli_settings)
    try:
        await client.send_action_async(
            DomainAction(action_type="inventory.stock.count", data={"sku": "A"}))
        reply = await client.send_action_pseudo_sync(
            DomainAction(action_type="inventory.stock.count", data={"sku": "B"}), timeout=10)
        assert reply is not None
        assert reply.success, reply
        await client.send_action_async_with_callback(
            DomainAction(action_type="inventory.stock.count", data={"sku": "C"}),
            "orders.stock.counted")  # fmt: skip
        await eventually(lambda: "orders.stock.counted" in seen)
    finally:
        await client.close()
        await inventory.stop(grace=0.5)
        await orders.stop(grace=0.5)
    assert seen.count("inventory.stock.count") == 3
    assert denied(server) == []


async def test_client_role_sends_a_batch_without_transactions(
    server: Any, connect: Connect
) -> None:
    """A batch, and concurrent sends coalesced into one round, by the client role (no
    MULTI/EXEC in its ACL) are written as plain pipelines of XADDs; nothing is refused."""
    cli_redis, cli_settings = await connect("client", "orders")
    client = BaseRedisClient("orders", cli_redis, cli_settings)
    try:
        ids = await client.send_actions_async(
            [DomainAction(action_type="inventory.stock.count", data={"n": n}) for n in range(3)])
        ids += await asyncio.gather(*(  # concurrent sends: the later ones go out together
            client.send_action_async(DomainAction(action_type="inventory.stock.count"))
            for _ in range(5)))
    finally:
        await client.close()
    with server.client() as admin:
        entries = admin.xrange("actionbus:dev:{inventory}:streams:main")
    assert sorted(entry_id.decode() for entry_id, _ in entries) == sorted(ids)
    assert len(ids) == 8
    assert denied(server) == []


async def test_worker_role_reads_priority_lanes(
    server: Any, connect: Connect, eventually: Any
) -> None:
    """A worker reading lanes (one script call per read) works under the worker ACL only: a
    pseudo-sync call on the high lane and a low-lane send are both handled."""
    inv_redis, inv_settings = await connect("worker", "inventory")
    cli_redis, cli_settings = await connect("client", "orders")
    worker = BaseWorker(inv_settings, inv_redis, worker_settings=fast_worker_settings(
        check_permissions=False, lanes=True))
    seen: list[str] = []

    @worker.handler("inventory.stock.count")
    async def count(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        seen.append(data["sku"])
        return {"count": 3}

    await worker.start()
    client = BaseRedisClient("orders", cli_redis, cli_settings)
    try:
        await client.send_action_async(
            DomainAction(action_type="inventory.stock.count", data={"sku": "low"}),
            priority="low")
        reply = await client.send_action_pseudo_sync(
            DomainAction(action_type="inventory.stock.count", data={"sku": "high"}),
            timeout=10)
        assert reply is not None
        assert reply.success, reply
        await eventually(lambda: "low" in seen)
    finally:
        await client.close()
        await worker.stop(grace=0.5)
    assert sorted(seen) == ["high", "low"]
    assert denied(server) == []


class Session(BaseModel):
    """A state for the state-manager role."""

    visits: int = 0


async def test_state_role(server: Any, connect: Connect) -> None:
    """save/load/update/delete work for the state user under its ACL only."""
    redis, s = await connect("state", "sessions")
    sessions = RedisStateManager(redis, Session, s)
    await sessions.save_state("u1", Session(visits=1))
    await sessions.update_state("u1", lambda st: Session(visits=(st.visits if st else 0) + 1))
    assert await sessions.load_state("u1") == Session(visits=2)
    assert await sessions.delete_state("u1")
    assert denied(server) == []


async def test_cli_role(server: Any) -> None:
    """info, dead-letters list/replay and send run for the cli user under its ACL only."""
    with server.client() as admin:
        admin.xadd("actionbus:dev:{inventory}:streams:main", {"data": "{}"})
        admin.xgroup_create("actionbus:dev:{inventory}:streams:main", "inventory", id="0")
        admin.xadd("actionbus:dev:{inventory}:streams:dead", {"data": "{}", "reason": "malformed"})
    url = f"redis://actionbus-cli:{PASSWORD}@127.0.0.1:{server.port}/0"

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli_main, ["--url", url, *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert json.loads(await asyncio.to_thread(run, "info", "inventory"))["dead_letters"] == 1
    assert "malformed" in await asyncio.to_thread(run, "dead-letters", "list", "inventory")
    await asyncio.to_thread(run, "dead-letters", "replay", "inventory", "--all")
    await asyncio.to_thread(run, "send", "inventory.stock.count", "--data", "{}")
    assert denied(server) == []


async def test_check_permissions_passes_for_each_role(server: Any) -> None:
    """With the documented line (check commands included) every role passes its check."""
    with server.client() as admin:
        for role in ROLE_COMMANDS:
            setuser(admin, acl_setuser(role, password=PASSWORD))
    for role in ROLE_COMMANDS:
        async with RedisManager(settings_for(server, role, "inventory")) as m:
            keys = ["actionbus:dev:{inventory}:streams:main", "actionbus:dev:{orders}:responses:x"]
            assert await check_permissions(m.get_client(), role, keys) is True


async def test_check_permissions_names_each_missing_command(server: Any) -> None:
    """A worker user without XACK and CLAIM is refused with both commands named."""
    line = acl_setuser("worker", password=PASSWORD).replace(" +xack", "").replace(" +xclaim", "")
    with server.client() as admin:
        setuser(admin, line)
    async with RedisManager(settings_for(server, "worker", "inventory")) as m:
        with pytest.raises(PermissionsError, match=r"xack on .*xclaim on") as info:
            await check_permissions(m.get_client(), "worker",
                                    ["actionbus:dev:{inventory}:streams:main"])  # fmt: skip
    assert {c for c, _ in info.value.missing} == {"xack", "xclaim"}
    assert PASSWORD not in str(info.value)


async def test_check_permissions_names_a_key_outside_the_pattern(server: Any) -> None:
    """A sample key outside the user's key pattern is named as missing access."""
    with server.client() as admin:
        setuser(admin, acl_setuser("client", password=PASSWORD))
    async with RedisManager(settings_for(server, "client", "orders")) as m:
        with pytest.raises(PermissionsError, match=r"xadd on other:prod:inventory"):
            await check_permissions(m.get_client(), "client", ["other:prod:inventory:streams:main"])


async def test_check_permissions_skips_without_dryrun_rights(server: Any) -> None:
    """Without +acl|dryrun the check is skipped (False), not an error."""
    async with RedisManager(settings_for(server, "client", "orders")) as m:
        assert await check_permissions(m.get_client(), "client", ["actionbus:dev:x"]) is False


def test_readme_documents_each_role_line() -> None:
    """The README's ACL SETUSER line of every role is exactly what acl_setuser() produces."""
    text = README.read_text()
    for role in ROLE_COMMANDS:
        assert acl_setuser(role) in text, role
    assert re.search(r"config\|get", text)
    assert OPTIONAL_COMMANDS["worker"] == ("config|get", "xrange", "xdel")


async def test_state_and_client_roles_on_cluster(
    redis_cluster: Any, redis_cluster_url: str
) -> None:
    """On Redis Cluster, the state and client roles work with CLUSTER_COMMANDS added."""
    for node in redis_cluster.nodes:
        with node.client() as admin:
            for role in ("state", "client"):
                admin.execute_command(*acl_setuser(role, password=PASSWORD, cluster=True).split())
            admin.acl_log_reset()
    port = redis_cluster.nodes[0].port
    try:
        for role in ("state", "client"):
            url = f"redis://actionbus-{role}:{PASSWORD}@127.0.0.1:{port}/0"
            s = CommonAppSettings(_env_file=None, service_name="orders", redis_cluster=True,
                                  redis_url=url)  # fmt: skip
            async with RedisManager(s) as m:
                assert await check_permissions(m.get_client(), role, ["actionbus:dev:a:b"])
                if role == "state":
                    sessions = RedisStateManager(m.get_client(), Session, s)
                    await sessions.update_state("u", lambda st: Session(visits=1))
                    assert await sessions.load_state("u") == Session(visits=1)
                else:
                    client = BaseRedisClient("orders", m.get_client(), s)
                    await client.send_action_async(DomainAction(action_type="inventory.a.b"))
                    await client.close()
        for node in redis_cluster.nodes:
            with node.client() as admin:
                assert [e for e in admin.acl_log() if e["object"] not in HARMLESS] == []
    finally:
        for node in redis_cluster.nodes:
            with node.client() as admin:
                admin.acl_deluser("actionbus-state", "actionbus-client")


async def test_worker_and_client_roles_on_cluster(
    redis_cluster: Any, redis_cluster_url: str, eventually: Any
) -> None:
    """On Redis Cluster, a worker and a client logged in as their ACL users (cluster
    commands added) handle a send and a pseudo-sync call with nothing refused; a durable
    send's WAIT runs with the client role's optional +wait, and without it the
    NotReplicatedError names the refused WAIT."""
    from actionbus import NotReplicatedError

    for node in redis_cluster.nodes:
        with node.client() as admin:
            for role in ("worker", "client"):
                setuser(admin, acl_setuser(role, password=PASSWORD, cluster=True, check=False))
            setuser(admin, acl_setuser("client", user="bare-client", password=PASSWORD,
                                       cluster=True, check=False, optional=False))
            admin.acl_log_reset()
    port = redis_cluster.nodes[0].port

    def cluster_settings(user: str, service: str) -> CommonAppSettings:
        return CommonAppSettings(_env_file=None, service_name=service, redis_cluster=True,
                                 redis_url=f"redis://{user}:{PASSWORD}@127.0.0.1:{port}/0")

    seen: list[str] = []
    worker = BaseWorker(cluster_settings("actionbus-worker", "inventory"),
                        worker_settings=fast_worker_settings(check_permissions=False))

    @worker.handler("inventory.stock.count")
    async def count(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        seen.append(data["sku"])
        return {"count": 3}

    await worker.start()
    try:
        for user in ("actionbus-client", "bare-client"):
            s = cluster_settings(user, "orders")
            async with RedisManager(s) as m:
                client = BaseRedisClient("orders", m.get_client(), s)
                try:
                    with pytest.raises(NotReplicatedError) as caught:  # no replicas here
                        await client.send_action_async(DomainAction(
                            action_type="inventory.stock.count", data={"sku": user}),
                            wait_replicas=1, wait_timeout_ms=50)
                    assert ("NoPermissionError" in str(caught.value)) is (user == "bare-client")
                    reply = await client.send_action_pseudo_sync(DomainAction(
                        action_type="inventory.stock.count", data={"sku": "B"}), timeout=10)
                    assert reply is not None
                    assert reply.success, reply
                finally:
                    await client.close()
        await eventually(lambda: {"actionbus-client", "bare-client"} <= set(seen))
        for node in redis_cluster.nodes:
            with node.client() as admin:
                refused = [e for e in admin.acl_log() if e["object"] not in HARMLESS]
                assert all(e["username"] == "bare-client" and e["object"] == "wait"
                           for e in refused), refused
    finally:
        await worker.stop(grace=0.5)
        for node in redis_cluster.nodes:
            with node.client() as admin:
                admin.acl_deluser("actionbus-worker", "actionbus-client", "bare-client")
