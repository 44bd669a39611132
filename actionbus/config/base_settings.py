"""``CommonAppSettings``: the settings every actionbus service shares.

Read from keyword arguments, then environment variables, then ``.env``. Connection
precedence: an explicitly given ``redis_url`` wins; otherwise the URL is built from
``redis_host``/``redis_port``/``redis_db``/``redis_username``/``redis_password``/``redis_ssl``.
Passwords are ``SecretStr`` and are masked wherever a URL is shown.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CommonAppSettings"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_LOG_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"}


def mask_url(url: str) -> str:
    """Return ``url`` with any password (in the userinfo or a ``password=`` query) as ``***``."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if parts.password is None and not any(k == "password" for k, _ in query):
            return url
        netloc = parts.netloc
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            netloc = f"{parts.username or ''}:***@{host}"
        masked = urlencode([(k, "***" if k == "password" else v) for k, v in query], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, masked, ""))
    except ValueError:
        return "<unparsable URL>"


class CommonAppSettings(BaseSettings):
    """Settings shared by every service: identity, logging, Redis connection, key layout."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,  # a rejected URL must not echo its password
    )

    service_name: str = Field(description="This service's name (required; SERVICE_NAME).")
    environment: str = Field("dev", description="Deployment environment; part of every key.")
    log_level: str = Field("INFO", description="Logging level name.")
    key_prefix: str = Field("actionbus", description="First part of every Redis key.")

    redis_url: str | None = Field(None, description="Full Redis URL; wins over the fields below.")
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_db: int = Field(0, ge=0)
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_ssl: bool = False
    redis_cluster: bool = Field(False, description="Connect with the Redis Cluster client.")
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description="Sentinel addresses (host:port); when set, the master is found through them.",
    )
    redis_sentinel_master: str | None = Field(
        None, description="The master's name as the sentinels know it (`sentinel monitor`)."
    )

    redis_decode_responses: bool = Field(
        False, description="Decode replies to str (the library itself works with either)."
    )
    redis_socket_connect_timeout: float = Field(5.0, gt=0)
    redis_socket_timeout: float = Field(
        10.0, gt=0, description="Per-command read timeout; blocking reads use shorter blocks."
    )
    redis_max_connections: int = Field(50, ge=1)
    redis_pool_timeout: float = Field(
        10.0, gt=0, description="Wait this long for a free pooled connection before failing."
    )
    redis_health_check_interval: int = Field(30, ge=0)
    redis_retries: int = Field(
        3, ge=0, description="Retries (jittered backoff) of a command after a connection error."
    )
    redis_socket_keepalive: bool = True
    redis_socket_keepalive_options: dict[int, int] = Field(
        default_factory=dict, description="TCP keepalive options, socket constant -> value."
    )

    max_payload_bytes: int = Field(
        1_048_576, ge=256, description="Largest serialized action accepted by send methods."
    )
    response_ttl_seconds: int = Field(
        60, ge=1, description="TTL of pseudo-sync response lists, so late replies leave no key."
    )

    @field_validator("service_name", "environment", "key_prefix")
    @classmethod
    def _check_name(cls, value: str, info: Any) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{info.field_name}={value!r} is not allowed: use 1-100 letters, digits, "
                "'_', '-' or '.', starting with a letter or digit (no ':', '*', braces or spaces)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"log_level={value!r} is not one of {sorted(_LOG_LEVELS)}")
        return level

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"redis_url={mask_url(value)!r} must start with redis://, rediss:// or unix://"
            )
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"redis_sentinels entry {address!r} is not host:port (e.g. 10.0.0.5:26379)"
                )
        return value

    @model_validator(mode="after")
    def _check_topology(self) -> CommonAppSettings:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError(
                "redis_sentinels and redis_sentinel_master go together: give the sentinel "
                "addresses and the monitored master's name, or neither"
            )
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("choose Redis Cluster or Sentinel, not both")
        return self

    @model_validator(mode="after")
    def _check_keepalive(self) -> CommonAppSettings:
        if self.redis_socket_keepalive_options and not self.redis_socket_keepalive:
            raise ValueError(
                "redis_socket_keepalive_options are set but redis_socket_keepalive is False; "
                "enable keepalive or drop the options"
            )
        return self

    @property
    def effective_redis_url(self) -> str:
        """The URL used to connect: ``redis_url`` if given, else one built from the fields."""
        if self.redis_url:
            return self.redis_url
        scheme = "rediss" if self.redis_ssl else "redis"
        auth = ""
        if self.redis_password is not None:
            secret = quote(self.redis_password.get_secret_value(), safe="")
            auth = f"{quote(self.redis_username or '', safe='')}:{secret}@"
        elif self.redis_username:
            auth = f"{quote(self.redis_username, safe='')}@"
        return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def masked_redis_url(self) -> str:
        """``effective_redis_url`` with the password replaced by ``***``."""
        return mask_url(self.effective_redis_url)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name == "redis_url" and value else value)
