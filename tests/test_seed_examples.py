"""The seeds' code examples, with ``actionbus`` import paths, run against the test Redis."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import DomainActionResponse


def _seeds_dir() -> Path:
    """shared/seeds beside the clone (CI), else /work/shared/seeds (the dev machine)."""
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "seeds",
                      Path("/work/shared/seeds")):
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/seeds")


SEEDS = _seeds_dir()


# -- seed 003: redis_pool ---------------------------------------------------------


async def test_seed_003_redis_pool_main(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 003's ``main()`` (get_redis_client, set/get, close_redis_pool) runs as written."""
    from actionbus.config import CommonAppSettings
    from actionbus.redis_pool import close_redis_pool, get_redis_client

    async def main() -> None:
        app_settings = CommonAppSettings(
            redis_url=redis_url,
            redis_decode_responses=True,
            service_name="mi_servicio_ejemplo",
            log_level="INFO",
        )

        redis_client = None
        try:
            redis_client = await get_redis_client(app_settings)
            print("Cliente Redis obtenido exitosamente.")
            await redis_client.set("mi_clave_async", "mi_valor_async")
            valor = await redis_client.get("mi_clave_async")
            print(f"Valor obtenido de Redis: {valor}")
        except Exception as e:
            print(f"Error durante la operación con Redis: {e}")
        finally:
            await close_redis_pool()
            print("Pool de Redis cerrado.")

    await main()
    assert capsys.readouterr().out.splitlines() == [
        "Cliente Redis obtenido exitosamente.",
        "Valor obtenido de Redis: mi_valor_async",
        "Pool de Redis cerrado.",
    ]


async def test_seed_003_close_after_failed_get(capsys: pytest.CaptureFixture[str]) -> None:
    """As seed 003 notes, close_redis_pool() is safe after get_redis_client failed."""
    from actionbus.config import CommonAppSettings
    from actionbus.redis_pool import close_redis_pool, get_redis_client

    settings = CommonAppSettings(
        _env_file=None, service_name="mi_servicio_ejemplo", redis_url="redis://127.0.0.1:1/0"
    )
    try:
        await get_redis_client(settings)
    except Exception as e:
        print(f"Error durante la operación con Redis: {e}")
    finally:
        await close_redis_pool()
    assert "127.0.0.1:1" in capsys.readouterr().out


def _seed_blocks(name_prefix: str) -> list[str]:
    [path] = SEEDS.glob(f"{name_prefix}_*.txt")
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.skipif(
    not SEEDS.is_dir(),
    reason="no seed documents: neither shared/seeds beside the clone nor /work/shared/seeds",
)
async def test_seed_003_code_block_verbatim(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 003's code block, only the package path and the server URL changed, runs."""
    [block] = _seed_blocks("003")
    assert "redis://localhost:6379/0" in block
    source = block.replace("refactorizado.common", "actionbus").replace(
        "redis://localhost:6379/0", redis_url
    )
    namespace: dict[str, Any] = {"__name__": "seed_003"}
    exec(compile(source, "seed_003", "exec"), namespace)
    await namespace["main"]()
    out = capsys.readouterr().out
    assert "Valor obtenido de Redis: mi_valor_async" in out
    assert "Error" not in out


# -- seed 000: RedisManager, BaseRedisClient, RedisStateManager, BaseService ------------


async def test_seed_000_redis_manager_startup_and_shutdown(redis_url: str) -> None:
    """Seed 000's startup_service()/shutdown_service() with RedisManager work as written."""
    from actionbus.clients.redis_manager import RedisManager
    from actionbus.config import CommonAppSettings

    class MockServiceSettings:
        service_name = "my_service"
        common_settings = CommonAppSettings(
            redis_url=redis_url, environment="dev", service_name="my_service"
        )

    service_settings = MockServiceSettings()
    state: dict[str, Any] = {"redis_manager": None, "redis_connection": None}

    async def startup_service() -> None:
        redis_manager = RedisManager(settings=service_settings.common_settings)
        await redis_manager.initialize()
        state["redis_manager"] = redis_manager
        state["redis_connection"] = redis_manager.get_client()

    async def shutdown_service() -> None:
        if state["redis_manager"]:
            await state["redis_manager"].close()

    await startup_service()
    redis_conn = state["redis_manager"].get_client()
    assert redis_conn is state["redis_connection"]
    assert await redis_conn.ping()
    await shutdown_service()
    assert not state["redis_manager"].is_initialized


async def test_seed_000_base_redis_client_send(redis_url: str) -> None:
    """Seed 000's BaseRedisClient instantiation and send_action_async of its example action."""
    from actionbus.clients import BaseRedisClient
    from actionbus.clients.redis_manager import RedisManager
    from actionbus.config import CommonAppSettings
    from actionbus.models.actions import DomainAction

    common_settings = CommonAppSettings(redis_url=redis_url, service_name="my_service")
    async with RedisManager(settings=common_settings) as redis_manager:
        redis_connection = redis_manager.get_client()
        base_redis_client = BaseRedisClient(
            service_name=common_settings.service_name,
            redis_client=redis_connection,
            settings=common_settings,
        )
        action_to_send = DomainAction(
            action_id=str(uuid.uuid4()),
            action_type="another_service.do_something",
            data={"key": "value"},
        )
        await base_redis_client.send_action_async(action_to_send)
        await base_redis_client.close()

        stream = base_redis_client.queue_manager.get_service_action_stream("another_service")
        [(_, fields)] = await redis_connection.xrange(stream)
        sent = json.loads(fields[b"data"])
        assert sent["action_id"] == str(action_to_send.action_id)
        assert sent["origin_service"] == "my_service"
        assert sent["data"] == {"key": "value"}


class UserSessionState(BaseModel):
    """The seed's ``common.models.user_session.UserSessionState`` stand-in."""

    user_id: str
    roles: list[str] = []


def _user_session_service() -> type:
    """Seed 000's UserSessionService, with ``def __init__`` (``async def`` is invalid there)."""
    from actionbus.clients import RedisStateManager
    from actionbus.services import BaseService

    class UserSessionService(BaseService):
        def __init__(
            self, app_settings: Any, service_redis_client: Any = None, direct_redis_conn: Any = None
        ) -> None:
            super().__init__(app_settings, service_redis_client, direct_redis_conn)
            if not direct_redis_conn:
                raise ValueError(
                    "UserSessionService requiere direct_redis_conn para RedisStateManager"
                )
            self.session_state_manager = RedisStateManager[UserSessionState](
                redis_conn=direct_redis_conn,
                state_model=UserSessionState,
                app_settings=app_settings,
            )

        async def get_user_session(self, user_id: str) -> UserSessionState | None:
            session_key = f"user_session:{user_id}"
            return await self.session_state_manager.load_state(session_key)

        async def update_user_session(self, user_id: str, session_data: UserSessionState) -> None:
            session_key = f"user_session:{user_id}"
            await self.session_state_manager.save_state(
                session_key, session_data, expiration_seconds=3600
            )

    return UserSessionService


async def test_seed_000_user_session_service(redis_url: str) -> None:
    """Seed 000's UserSessionService saves and loads sessions with a one-hour expiry."""
    from actionbus.clients.redis_manager import RedisManager
    from actionbus.config import CommonAppSettings

    service_cls = _user_session_service()
    app_settings = CommonAppSettings(redis_url=redis_url, service_name="user_sessions")
    async with RedisManager(settings=app_settings) as manager:
        conn = manager.get_client()
        service = service_cls(app_settings, direct_redis_conn=conn)
        assert await service.get_user_session("42") is None
        await service.update_user_session("42", UserSessionState(user_id="42", roles=["admin"]))
        assert await service.get_user_session("42") == UserSessionState(
            user_id="42", roles=["admin"]
        )
        key = service.session_state_manager.key_for("user_session:42")
        assert 3590 < await conn.ttl(key) <= 3600
        assert await service.session_state_manager.delete_state("user_session:42") is True


def test_seed_000_user_session_service_requires_connection(redis_url: str) -> None:
    """The seed's guard: UserSessionService without direct_redis_conn raises ValueError."""
    from actionbus.config import CommonAppSettings

    service_cls = _user_session_service()
    settings = CommonAppSettings(redis_url=redis_url, service_name="user_sessions")
    with pytest.raises(ValueError, match="requiere direct_redis_conn"):
        service_cls(settings)


async def test_seed_000_general_flow(redis_url: str) -> None:
    """Seed 000's general flow: manager, client sends, target worker answers via its client."""
    from actionbus.clients import BaseRedisClient
    from actionbus.clients.redis_manager import RedisManager
    from actionbus.config import CommonAppSettings
    from actionbus.models.actions import DomainAction
    from actionbus.workers import BaseWorker

    caller = CommonAppSettings(redis_url=redis_url, service_name="gateway")
    target = CommonAppSettings(redis_url=redis_url, service_name="user_sessions")
    async with RedisManager(caller) as caller_redis, RedisManager(target) as target_redis:
        worker = BaseWorker(target, target_redis.get_client())

        @worker.handler("user_sessions.session.get")
        async def get_session(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
            return {"user_id": data["user_id"], "active": True}

        async with worker:
            client = BaseRedisClient(
                service_name="gateway", redis_client=caller_redis.get_client(), settings=caller
            )
            try:
                response = await client.send_action_pseudo_sync(
                    DomainAction(action_type="user_sessions.session.get", data={"user_id": "7"}),
                    timeout=5,
                )
            finally:
                await client.close()
    assert isinstance(response, DomainActionResponse)
    assert response.data == {"user_id": "7", "active": True}
