"""``CommonAppSettings``: the settings every actionbus service shares.

Read from keyword arguments, then environment variables, then ``.env``. Connection
precedence: an explicitly given ``redis_url`` wins; otherwise the URL is built from
``redis_host``/``redis_port``/``redis_db``/``redis_username``/``redis_password``/``redis_ssl``.
Passwords are ``SecretStr``; ``redis_url`` stays a ``str`` (code reads it as before) but any
password in it is masked in reprs, ``model_dump()`` and ``model_dump_json()``. TLS options
(``redis_ssl_*``) apply to standalone, Sentinel and cluster connections.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actionbus.models.actions import SERVICE_NAME_PATTERN
from actionbus.partitions import MAX_PARTITIONS

__all__ = ["CommonAppSettings"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SERVICE = re.compile(SERVICE_NAME_PATTERN)
_LOG_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"}


def _is_secret_param(name: str) -> bool:
    return "password" in name.lower()


def mask_url(url: str) -> str:
    """Return ``url`` with every password as ``***``: the userinfo one and any query
    parameter whose name contains ``password`` (``password=``, ``ssl_password=``...)."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if parts.password is None and not any(_is_secret_param(k) for k, _ in query):
            return url
        netloc = parts.netloc
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            netloc = f"{parts.username or ''}:***@{host}"
        masked = urlencode(
            [(k, "***" if _is_secret_param(k) else v) for k, v in query], safe="*"
        )
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

    redis_sentinel_username: str | None = Field(
        None, description="ACL user on the sentinels themselves (when they require AUTH)."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the sentinels (secret); the master uses redis_password."
    )
    redis_sentinel_ssl: bool | None = Field(
        None, description="TLS to the sentinels; unset means the same as redis_ssl."
    )

    redis_ssl_ca_certs: str | None = Field(None, description="CA bundle file (PEM) for TLS.")
    redis_ssl_ca_path: str | None = Field(None, description="Directory of CA files for TLS.")
    redis_ssl_certfile: str | None = Field(None, description="Client certificate (PEM).")
    redis_ssl_keyfile: str | None = Field(None, description="Client private key (PEM).")
    redis_ssl_password: SecretStr | None = Field(
        None, description="Passphrase of an encrypted redis_ssl_keyfile (secret)."
    )
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        "required", description="Server certificate verification: required, optional, none."
    )
    redis_ssl_check_hostname: bool | None = Field(
        None,
        description="Check that the server certificate names the host connected to; unset "
        "means on unless redis_ssl_cert_reqs is none.",
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
    wait_replicas: int = Field(
        0, ge=0, description="Default for sends: after the XADD, WAIT until this many replicas "
        "have the entry (0: do not wait); fewer raises NotReplicatedError.",
    )
    wait_timeout_ms: int = Field(
        1000, ge=1, description="Longest wait for wait_replicas, in milliseconds."
    )
    response_ttl_seconds: int = Field(
        60, ge=1, description="TTL of pseudo-sync response lists, so late replies leave no key."
    )
    pseudo_sync_priority: Literal["high", "normal", "low"] = Field(
        "high", description="Lane of pseudo-sync calls without priority= (used only when the "
        "target's workers read lanes; otherwise its main stream)."
    )
    lanes_cache_s: float = Field(
        5.0, ge=0, description="How long a client trusts what it learnt about a target's lanes "
        "and partitions."
    )
    partitions: dict[str, int] = Field(
        default_factory=dict, description="Partitioned services and their partition count, "
        "e.g. {\"orders\": 3} (others: 1); senders and workers of a service must agree."
    )

    @field_validator("partitions")
    @classmethod
    def _check_partitions(cls, value: dict[str, int]) -> dict[str, int]:
        for service, count in value.items():
            if not _SERVICE.fullmatch(service):
                raise ValueError(f"partitions: {service!r} is not a service name")
            if isinstance(count, bool) or not 1 <= count <= MAX_PARTITIONS:
                raise ValueError(
                    f"partitions[{service!r}] must be from 1 to {MAX_PARTITIONS}, got {count!r}")
        return value

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

    @model_validator(mode="after")
    def _check_tls(self) -> CommonAppSettings:
        given = [
            name for name in ("redis_ssl_ca_certs", "redis_ssl_ca_path", "redis_ssl_certfile",
                              "redis_ssl_keyfile", "redis_ssl_password")
            if getattr(self, name) is not None
        ]  # fmt: skip
        if given and not self.uses_tls:
            raise ValueError(
                f"{', '.join(given)} set but the connection is not TLS: use a rediss:// "
                "redis_url or redis_ssl=true"
            )
        if self.redis_ssl_keyfile and not self.redis_ssl_certfile:
            raise ValueError("redis_ssl_keyfile needs redis_ssl_certfile (the client certificate)")
        if self.redis_ssl_check_hostname is True and self.redis_ssl_cert_reqs == "none":
            raise ValueError(
                "redis_ssl_check_hostname=true needs certificate verification: set "
                "redis_ssl_cert_reqs to required/optional, or redis_ssl_check_hostname=false"
            )
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether data connections use TLS (``rediss://`` or ``redis_ssl``)."""
        if self.redis_sentinels:
            return self.redis_ssl or (self.redis_sentinel_ssl is True)
        return urlsplit(self.effective_redis_url).scheme == "rediss"

    @property
    def tls_check_hostname(self) -> bool:
        """The hostname check in effect (``redis_ssl_check_hostname`` or its default)."""
        if self.redis_ssl_check_hostname is None:
            return self.redis_ssl_cert_reqs != "none"
        return self.redis_ssl_check_hostname

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

    @field_serializer("redis_url")
    def _mask_redis_url(self, value: str | None) -> str | None:
        """Dumps (``model_dump``/``model_dump_json``) never carry a URL password."""
        return mask_url(value) if value else value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name == "redis_url" and value else value)
