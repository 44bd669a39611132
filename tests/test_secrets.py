"""Secrets in settings never appear in clear in reprs, dumps, logs or error messages."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from actionbus import CommonAppSettings, RedisManager
from actionbus.config import mask_url
from actionbus.exceptions import RedisAuthenticationError

SECRET = "S3cr3t-Value-xyz"


def make(**values: Any) -> CommonAppSettings:
    return CommonAppSettings(_env_file=None, service_name="sec", **values)


def every_view(settings: CommonAppSettings) -> str:
    return "\n".join([
        repr(settings), str(settings), str(settings.model_dump()),
        settings.model_dump_json(), json.dumps(settings.model_dump(mode="json")),
        settings.masked_redis_url,
    ])  # fmt: skip


@pytest.mark.parametrize("url", [
    f"redis://user:{SECRET}@127.0.0.1:1/0",
    f"redis://127.0.0.1:1/0?password={SECRET}",
    f"rediss://127.0.0.1:1/0?ssl_password={SECRET}",
    f"redis://127.0.0.1:1/0?db=0&sentinel_password={SECRET}",
    f"redis://:{SECRET}@127.0.0.1:1/0?ssl_password={SECRET}&x=1",
])  # fmt: skip
def test_url_password_masked_everywhere(url: str) -> None:
    """Every password in redis_url (userinfo or *password* query) is *** in repr and dumps."""
    settings = make(redis_url=url)
    views = every_view(settings)
    assert SECRET not in views
    assert "***" in settings.model_dump_json()


def test_code_still_reads_the_clear_url() -> None:
    """settings.redis_url and effective_redis_url keep returning the real URL for connecting."""
    url = f"redis://user:{SECRET}@127.0.0.1:1/0"
    settings = make(redis_url=url)
    assert settings.redis_url == url
    assert settings.effective_redis_url == url


def test_secret_fields_masked_everywhere() -> None:
    """redis_password, redis_sentinel_password and redis_ssl_password are secret in every view."""
    settings = make(
        redis_password=SECRET, redis_sentinel_password=SECRET, redis_ssl=True,
        redis_sentinels=["127.0.0.1:26379"], redis_sentinel_master="m",
        redis_ssl_certfile="/c.pem", redis_ssl_keyfile="/k.pem", redis_ssl_password=SECRET,
    )  # fmt: skip
    assert SECRET not in every_view(settings)
    assert settings.redis_sentinel_password is not None
    assert settings.redis_sentinel_password.get_secret_value() == SECRET


def test_mask_url_covers_every_password_parameter() -> None:
    """mask_url masks any query parameter whose name contains 'password', case-insensitively."""
    masked = mask_url(f"rediss://h:1/0?SSL_Password={SECRET}&ssl_ca_certs=/ca.pem")
    assert SECRET not in masked
    assert "ssl_ca_certs=" in masked


async def test_wrong_password_is_typed_and_masked(
    fresh_redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused password raises RedisAuthenticationError; neither it nor DEBUG logs hold it."""
    with fresh_redis_server.client() as admin:
        admin.config_set("requirepass", "the-real-one")
    caplog.set_level(logging.DEBUG)
    url = f"redis://user:{SECRET}@127.0.0.1:{fresh_redis_server.port}/0"
    with pytest.raises(RedisAuthenticationError, match="Check the user name and password") as info:
        await RedisManager(make(redis_url=url)).initialize()
    assert SECRET not in str(info.value) + repr(info.value) + caplog.text


async def test_sentinel_and_master_passwords_authenticate_and_stay_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis_sentinel_password logs in to a password-protected sentinel; no password leaks."""
    from actionbus.embedded import RedisSentinel, RedisServer

    caplog.set_level(logging.DEBUG)
    with (
        RedisServer(password=SECRET + "-master") as master,
        RedisSentinel(master, password=SECRET) as sentinel,
    ):
        values: dict[str, Any] = {
            "redis_sentinels": [sentinel.address], "redis_sentinel_master": sentinel.master_name,
            "redis_password": SECRET + "-master",
        }  # fmt: skip
        settings = make(**values, redis_sentinel_password=SECRET)
        async with RedisManager(settings) as manager:
            assert await manager.get_client().ping()
            assert SECRET not in repr(manager)
        assert SECRET not in every_view(settings) + caplog.text
