"""CommonAppSettings: fields of both seeds, env and .env, URL precedence, secrets, validation."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from actionbus import CommonAppSettings, RedisConnectionError, RedisManager
from actionbus.config import mask_url
from actionbus.connection import connection_options, driver_info

SECRET = "hunter2-s3cret"

_ENV_NAMES = [
    "SERVICE_NAME", "ENVIRONMENT", "LOG_LEVEL", "KEY_PREFIX", "REDIS_URL", "REDIS_HOST",
    "REDIS_PORT", "REDIS_DB", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_SSL",
    "REDIS_CLUSTER", "REDIS_DECODE_RESPONSES", "REDIS_SOCKET_CONNECT_TIMEOUT",
    "REDIS_MAX_CONNECTIONS", "REDIS_HEALTH_CHECK_INTERVAL", "REDIS_SOCKET_KEEPALIVE",
    "REDIS_SOCKET_KEEPALIVE_OPTIONS",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run every test in an empty directory with no settings in the environment."""
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make(**values: Any) -> CommonAppSettings:
    """CommonAppSettings with a service_name unless one is given."""
    values.setdefault("service_name", "svc")
    return CommonAppSettings(**values)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_seed_fields_exist_with_defaults() -> None:
    """Every setting both seeds name exists, with usable defaults."""
    settings = make()
    for name in [
        "service_name", "environment", "log_level", "redis_url", "redis_decode_responses",
        "redis_socket_connect_timeout", "redis_max_connections", "redis_health_check_interval",
        "redis_socket_keepalive", "redis_socket_keepalive_options", "redis_host", "redis_port",
        "redis_db", "redis_username", "redis_password", "redis_ssl",
    ]:
        assert name in CommonAppSettings.model_fields, name
        getattr(settings, name)
    assert settings.redis_url is None
    assert settings.effective_redis_url == "redis://127.0.0.1:6379/0"


def test_service_name_is_required() -> None:
    """service_name has no default: without it (argument, env or .env) settings are refused."""
    with pytest.raises(ValidationError, match="service_name"):
        CommonAppSettings()


def test_seed_003_constructor_call() -> None:
    """The keyword arguments of seed 003's example are accepted as given."""
    settings = make(
        redis_url="redis://localhost:6379/0",
        redis_decode_responses=True,
        service_name="mi_servicio_ejemplo",
        log_level="INFO",
    )
    assert settings.redis_decode_responses is True
    assert settings.service_name == "mi_servicio_ejemplo"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from environment variables named after the fields."""
    monkeypatch.setenv("SERVICE_NAME", "inventory")
    monkeypatch.setenv("ENVIRONMENT", "prod")
    monkeypatch.setenv("REDIS_PORT", "7001")
    monkeypatch.setenv("REDIS_SOCKET_KEEPALIVE_OPTIONS", '{"4": 30}')
    settings = CommonAppSettings()
    assert settings.service_name == "inventory"
    assert settings.environment == "prod"
    assert settings.redis_port == 7001
    assert settings.redis_socket_keepalive_options == {4: 30}


def test_dotenv_file_is_read(clean_env: Path) -> None:
    """A ``.env`` file in the working directory is read."""
    (clean_env / ".env").write_text("SERVICE_NAME=billing\nREDIS_DB=3\nLOG_LEVEL=debug\n")
    settings = CommonAppSettings()
    assert settings.service_name == "billing"
    assert settings.redis_db == 3
    assert settings.log_level == "DEBUG"


def test_precedence_kwargs_then_env_then_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyword arguments beat environment variables, which beat ``.env``."""
    (clean_env / ".env").write_text("SERVICE_NAME=from-dotenv\nENVIRONMENT=from-dotenv\n")
    monkeypatch.setenv("SERVICE_NAME", "from-env")
    settings = CommonAppSettings(environment="from-kwargs")
    assert settings.service_name == "from-env"
    assert settings.environment == "from-kwargs"


def test_explicit_redis_url_wins_over_fields() -> None:
    """An explicitly given redis_url is used even when the individual fields are set."""
    settings = make(
        redis_url="redis://127.0.0.9:7000/4", redis_host="other", redis_port=1234, redis_db=9
    )
    assert settings.effective_redis_url == "redis://127.0.0.9:7000/4"


def test_redis_url_from_env_wins_over_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_URL from the environment also wins over REDIS_HOST/REDIS_PORT."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.9:7000/4")
    monkeypatch.setenv("REDIS_HOST", "ignored")
    assert make().effective_redis_url == "redis://127.0.0.9:7000/4"


def test_empty_redis_url_falls_back_to_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty REDIS_URL counts as not given: the URL is built from the fields."""
    monkeypatch.setenv("REDIS_URL", "")
    settings = make(redis_host="cache", redis_port=6390)
    assert settings.redis_url is None
    assert settings.effective_redis_url == "redis://cache:6390/0"


def test_url_built_from_fields_with_auth_and_ssl() -> None:
    """Without redis_url the URL is built from host/port/db/username/password/ssl, quoted."""
    settings = make(
        redis_host="cache.internal", redis_port=6380, redis_db=2,
        redis_username="alice", redis_password="p@ss:w/rd", redis_ssl=True,
    )
    assert settings.effective_redis_url == "rediss://alice:p%40ss%3Aw%2Frd@cache.internal:6380/2"
    assert settings.masked_redis_url == "rediss://alice:***@cache.internal:6380/2"
    assert make(redis_username="bob").effective_redis_url == (
        "redis://bob@127.0.0.1:6379/0"
    )


async def test_built_url_authenticates_against_real_server(fresh_redis_server: Any) -> None:
    """A URL built from username/password fields (special characters included) logs in."""
    with fresh_redis_server.client() as admin:
        admin.execute_command(
            "ACL", "SETUSER", "alice", "on", ">p@ss:w/rd %x", "~*", "&*", "+@all"
        )
    settings = make(
        redis_host="127.0.0.1", redis_port=fresh_redis_server.port,
        redis_username="alice", redis_password="p@ss:w/rd %x",
    )
    async with RedisManager(settings) as manager:
        assert await manager.get_client().acl_whoami() in (b"alice", "alice")


def test_keepalive_options_reach_connection_kwargs() -> None:
    """redis_socket_keepalive(_options) are settings passed to the connection, not constants."""
    options = {socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
    settings = make(redis_socket_keepalive=True, redis_socket_keepalive_options=options)
    kwargs = connection_options(settings)
    assert kwargs["socket_keepalive"] is True
    assert kwargs["socket_keepalive_options"] == options


async def test_keepalive_options_used_by_live_client(redis_url: str) -> None:
    """A RedisManager client carries the configured keepalive options and still connects."""
    options = {socket.TCP_KEEPIDLE: 45, socket.TCP_KEEPCNT: 4}
    settings = make(
        redis_url=redis_url, redis_socket_keepalive_options=options, redis_max_connections=7
    )
    async with RedisManager(settings) as manager:
        client = manager.get_client()
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_keepalive"] is True
        assert kwargs["socket_keepalive_options"] == options
        assert client.connection_pool.max_connections == 7
        assert await client.ping()


async def test_new_connections_do_not_read_package_metadata(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLIENT SETINFO metadata is built once per process, not per connection (redis-py
    would read its package metadata for each: ~0.3 ms of CPU, 5 times as a worker starts)."""
    import redis.utils

    driver_info()  # built once, before counting
    calls: list[int] = []
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: calls.append(1) or real())
    async with RedisManager(make(redis_url=redis_url)) as manager:
        client = manager.get_client()
        await asyncio.gather(*(client.blpop(["nothing"], timeout=0.05) for _ in range(3)))
        assert len(client.connection_pool._in_use_connections) + len(  # type: ignore[union-attr]
            client.connection_pool._available_connections) >= 3  # type: ignore[union-attr]
    assert calls == []


def test_redis_retries_reach_connection_kwargs() -> None:
    """redis_retries sets how often a command is retried after a connection error."""
    kwargs = connection_options(make(redis_retries=2))
    assert kwargs["retry"]._retries == 2  # get_retries() exists only from redis-py 6
    assert connection_options(make(redis_retries=0))["retry"]._retries == 0
    with pytest.raises(ValidationError, match="redis_retries"):
        make(redis_retries=-1)


def test_keepalive_options_without_keepalive_rejected() -> None:
    """Keepalive options with keepalive disabled are refused with a message saying why."""
    with pytest.raises(ValidationError, match="redis_socket_keepalive is False"):
        make(redis_socket_keepalive=False, redis_socket_keepalive_options={4: 10})


def test_password_not_in_repr_or_str() -> None:
    """Neither repr() nor str() shows a password from redis_url or redis_password."""
    settings = make(
        redis_url=f"redis://user:{SECRET}@127.0.0.1:1/0", redis_password=SecretStr(SECRET)
    )
    for text in (repr(settings), str(settings), settings.masked_redis_url):
        assert SECRET not in text
    assert "user:***@127.0.0.1:1" in repr(settings)


async def test_query_string_password_masked() -> None:
    """A password given as ``?password=`` is masked in repr and connection errors too."""
    settings = make(redis_url=f"redis://127.0.0.1:{_closed_port()}/0?password={SECRET}")
    assert SECRET not in repr(settings)
    assert SECRET not in settings.masked_redis_url
    with pytest.raises(RedisConnectionError) as info:
        await RedisManager(settings).initialize()
    assert SECRET not in str(info.value)


def test_mask_url() -> None:
    """mask_url hides the password and leaves URLs without one unchanged."""
    assert mask_url(f"redis://u:{SECRET}@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url(f"redis://:{SECRET}@h/0") == "redis://:***@h/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


async def test_connection_error_names_host_port_not_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connecting to a closed port fails naming host:port; the password appears nowhere."""
    port = _closed_port()
    settings = make(
        redis_url=f"redis://user:{SECRET}@127.0.0.1:{port}/0", redis_socket_connect_timeout=1
    )
    caplog.set_level(logging.DEBUG)
    manager = RedisManager(settings)
    with pytest.raises(RedisConnectionError) as info:
        await manager.initialize()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert SECRET not in repr(manager)
    assert SECRET not in caplog.text


async def test_wrong_password_error_hides_password(fresh_redis_server: Any) -> None:
    """A refused login is a RedisConnectionError that does not repeat the password tried."""
    with fresh_redis_server.client() as admin:
        admin.config_set("requirepass", "the-real-one")
    settings = make(
        redis_host="127.0.0.1", redis_port=fresh_redis_server.port, redis_password=SECRET
    )
    with pytest.raises(RedisConnectionError) as info:
        await RedisManager(settings).initialize()
    assert str(fresh_redis_server.port) in str(info.value)
    assert SECRET not in str(info.value)


async def test_connect_and_close_logs_hide_password(
    fresh_redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The log lines of a successful connect and close show the masked URL only."""
    with fresh_redis_server.client() as admin:
        admin.config_set("requirepass", SECRET)
    url = f"redis://:{SECRET}@127.0.0.1:{fresh_redis_server.port}/0"
    caplog.set_level(logging.DEBUG)
    async with RedisManager(make(redis_url=url)) as manager:
        assert await manager.get_client().ping()
    assert f"127.0.0.1:{fresh_redis_server.port}" in caplog.text
    assert SECRET not in caplog.text


def test_invalid_url_error_hides_password() -> None:
    """A redis_url with a bad scheme is rejected without printing its password."""
    with pytest.raises(ValidationError) as info:
        make(redis_url=f"http://user:{SECRET}@h:1/0")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("url", ["http://h:1", "localhost:6379", "ftp://x"])
def test_invalid_url_rejected(url: str) -> None:
    """A redis_url that is not redis://, rediss:// or unix:// is refused, naming the schemes."""
    with pytest.raises(ValidationError, match="must start with redis://, rediss:// or unix://"):
        make(redis_url=url)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"])
def test_valid_url_schemes_accepted(url: str) -> None:
    """redis://, rediss:// and unix:// URLs are accepted as given."""
    assert make(redis_url=url).effective_redis_url == url


@pytest.mark.parametrize(
    "name", ["", "bad:name", "a*", "{tag}", "has space", "tab\tname", "-leading", "x" * 101]
)
def test_invalid_service_name_rejected(name: str) -> None:
    """service_name values that could forge a key are refused with the rule in the message."""
    with pytest.raises(ValidationError, match=r"service_name=.* is not allowed"):
        make(service_name=name)


def test_service_name_with_trailing_newline_rejected() -> None:
    """A service name ending in a newline is refused like any other whitespace."""
    with pytest.raises(ValidationError):
        make(service_name="svc\n")


@pytest.mark.parametrize("field", ["environment", "key_prefix"])
def test_invalid_environment_and_prefix_rejected(field: str) -> None:
    """environment and key_prefix obey the same naming rule as service_name."""
    with pytest.raises(ValidationError, match=f"{field}="):
        make(**{field: "a:b"})


def test_log_level_normalized_and_validated() -> None:
    """log_level is case-insensitive and an unknown level is refused, listing valid ones."""
    assert make(log_level="warning").log_level == "WARNING"
    with pytest.raises(ValidationError, match="log_level='LOUD' is not one of"):
        make(log_level="LOUD")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redis_port", 0),
        ("redis_port", 70000),
        ("redis_db", -1),
        ("redis_max_connections", 0),
        ("redis_socket_connect_timeout", 0),
        ("max_payload_bytes", 10),
        ("response_ttl_seconds", 0),
    ],
)
def test_out_of_range_numbers_rejected(field: str, value: int) -> None:
    """Numeric connection settings outside their range are refused."""
    with pytest.raises(ValidationError, match=field):
        make(**{field: value})
