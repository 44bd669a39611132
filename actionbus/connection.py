"""Build and check ``redis.asyncio`` clients from ``CommonAppSettings``.

One place decides every connection option, so ``RedisManager`` and ``RedisPool`` agree.
The pool is a ``WaitingConnectionPool``: when all ``redis_max_connections`` are busy a
command waits up to ``redis_pool_timeout`` for one instead of failing at once, and when
one is free it is taken without the waiting machinery.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ssl
import weakref
from pathlib import Path
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis-py >= 7.1: the CLIENT SETINFO metadata of each connection
    from redis.driver_info import DriverInfo
except ImportError:  # pragma: no cover - older redis-py reads its version once, at import
    DriverInfo = None  # type: ignore[assignment,misc]

from actionbus.backoff import Backoff
from actionbus.config import CommonAppSettings, mask_url
from actionbus.exceptions import (
    ConfigurationError,
    RedisAuthenticationError,
    RedisConnectionError,
    RedisTLSError,
)
from actionbus.pool import (
    WaitingConnectionPool,
    WaitingRedisCluster,
    WaitingSentinelConnectionPool,
)

__all__ = [
    "AnyRedis",
    "close_redis_client",
    "connection_options",
    "create_redis_client",
    "ping_or_raise",
]

AnyRedis: TypeAlias = Redis | RedisCluster
"""Either client actionbus accepts: standalone/Sentinel-backed ``Redis`` or ``RedisCluster``."""


def connection_options(settings: CommonAppSettings) -> dict[str, Any]:
    """The socket and decoding options shared by standalone and cluster clients."""
    options: dict[str, Any] = {
        "decode_responses": settings.redis_decode_responses,
        "socket_connect_timeout": settings.redis_socket_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": settings.redis_health_check_interval,
        "socket_keepalive": settings.redis_socket_keepalive,
        # A pooled connection broken by a server restart is replaced transparently.
        "retry": Retry(
            Backoff(base=0.05, cap=1.0),
            settings.redis_retries,
            (RedisConnError, RedisTimeoutError),
        ),
    }
    if settings.redis_socket_keepalive_options:
        options["socket_keepalive_options"] = dict(settings.redis_socket_keepalive_options)
    if DriverInfo is not None:
        options["driver_info"] = driver_info()
    return options


@functools.cache
def driver_info() -> Any:
    """The process's one ``DriverInfo`` (what ``CLIENT SETINFO`` sends: redis-py and its
    version). Without it redis-py builds one per connection, reading its installed
    package's metadata each time (about 0.3 ms of CPU per new connection)."""
    return DriverInfo()


def tls_options(settings: CommonAppSettings, *, cluster: bool = False) -> dict[str, Any]:
    """The ``ssl_*`` keyword arguments for a TLS connection from the ``redis_ssl_*`` settings.

    A TLS option given in the URL query (redis-py's own ``?ssl_ca_certs=``) still wins.
    redis-py's cluster client has no ``ssl_ca_path``/``ssl_password`` in some versions: the
    CA directory is then read into ``ssl_ca_data``; a key passphrase is refused clearly.
    """
    options: dict[str, Any] = {
        "ssl_cert_reqs": settings.redis_ssl_cert_reqs,
        "ssl_check_hostname": settings.tls_check_hostname,
    }
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, f"redis_{name}")
        if value is not None:
            options[name] = value
    accepted = inspect.signature(RedisCluster.__init__).parameters if cluster else None
    if settings.redis_ssl_ca_path is not None:
        if accepted is None or "ssl_ca_path" in accepted:
            options["ssl_ca_path"] = settings.redis_ssl_ca_path
        else:
            options["ssl_ca_data"] = _read_ca_dir(settings.redis_ssl_ca_path)
    if settings.redis_ssl_password is not None:
        if accepted is not None and "ssl_password" not in accepted:
            raise ConfigurationError(
                "redis_ssl_password is not supported by this redis-py's cluster client: "
                "use an unencrypted redis_ssl_keyfile (readable only by the service) instead"
            )
        options["ssl_password"] = settings.redis_ssl_password.get_secret_value()
    return options


def _read_ca_dir(path: str) -> str:
    """Every PEM certificate in the directory ``path``, concatenated."""
    try:
        files = sorted(p for p in Path(path).iterdir() if p.is_file())
        data = "".join(f.read_text() for f in files if "BEGIN CERTIFICATE" in f.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read redis_ssl_ca_path {path!r}: {exc}") from exc
    if not data:
        raise ConfigurationError(f"redis_ssl_ca_path {path!r} holds no PEM certificate")
    return data


def _sentinel_master(settings: CommonAppSettings, options: dict[str, Any]) -> Redis:
    """A client of the current master, found (and re-found after a failover) via sentinels."""
    assert settings.redis_sentinel_master is not None
    addresses = []
    for address in settings.redis_sentinels:
        host, _, port = address.rpartition(":")
        addresses.append((host, int(port)))
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_socket_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
    }
    if settings.redis_sentinel_password is not None:
        sentinel_options["username"] = settings.redis_sentinel_username
        sentinel_options["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinel_ssl = settings.redis_ssl if settings.redis_sentinel_ssl is None else (
        settings.redis_sentinel_ssl
    )
    if sentinel_ssl:
        sentinel_options.update(ssl=True, **tls_options(settings))
    if settings.redis_ssl:
        options = {**options, **tls_options(settings)}
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addresses, sentinel_kwargs=sentinel_options
    )
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=Redis,
        db=settings.redis_db,
        username=settings.redis_username,
        password=password,
        ssl=settings.redis_ssl,
        max_connections=settings.redis_max_connections,
        connection_pool_class=WaitingSentinelConnectionPool,
        timeout=settings.redis_pool_timeout,
        **options,
    )
    _SENTINELS[client] = sentinel
    return client


_SENTINELS: weakref.WeakKeyDictionary[Redis, Sentinel] = weakref.WeakKeyDictionary()
"""The sentinel links behind each Sentinel-managed client, closed with the client."""


async def close_redis_client(client: AnyRedis) -> None:
    """Close a client from ``create_redis_client`` and, for Sentinel, its sentinel links."""
    await client.aclose()
    if isinstance(client, RedisCluster):
        # After a failed command redis-py marks the client for re-initialization, and then
        # its aclose() closes nothing: the live masters' connections would leak.
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")
    sentinel = _SENTINELS.pop(client, None) if isinstance(client, Redis) else None
    if sentinel is not None:
        for link in sentinel.sentinels:
            await link.aclose()


def create_redis_client(settings: CommonAppSettings) -> AnyRedis:
    """Create (without connecting) the client the settings describe.

    Standalone by default; ``redis_cluster`` selects the cluster client; ``redis_sentinels``
    and ``redis_sentinel_master`` find the master through Sentinel.
    """
    url = settings.effective_redis_url
    options = connection_options(settings)
    if settings.redis_sentinels:
        return _sentinel_master(settings, options)
    if settings.uses_tls:
        options.update(tls_options(settings, cluster=settings.redis_cluster))
    if settings.redis_cluster:
        return WaitingRedisCluster.from_url(
            url, max_connections=settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout, **options,
        )
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout,
        **options,
    )
    return Redis.from_pool(pool)


def describe(settings: CommonAppSettings) -> str:
    """Where the configured server is, for messages: its URL (password masked) or sentinels."""
    if settings.redis_sentinels:
        return (f"master {settings.redis_sentinel_master!r} via sentinels "
                f"{', '.join(settings.redis_sentinels)}")
    return mask_url(settings.effective_redis_url)


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # walk the cause chain (bounded)
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen) or "certificate" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def ping_or_raise(client: AnyRedis, settings: CommonAppSettings) -> None:
    """PING the server; raise ``RedisConnectionError`` naming the masked URL on failure.

    A refused password raises ``RedisAuthenticationError``; a failed TLS handshake (unknown
    CA, wrong hostname, plaintext to a TLS port) raises ``RedisTLSError``.
    """
    try:
        async with asyncio.timeout(settings.redis_socket_connect_timeout):
            await client.ping()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        reason = mask_url(str(exc)) or "no answer"
        where, detail = describe(settings), f"{type(exc).__name__}: {reason}"
        if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or (
            "WRONGPASS" in str(exc)
        ):
            raise RedisAuthenticationError(
                f"Redis at {where} refused the credentials ({detail}). Check the user name "
                "and password (redis_username/redis_password or the URL) and the user's ACL."
            ) from exc
        if settings.uses_tls and _is_tls_failure(exc):
            raise RedisTLSError(
                f"TLS handshake with Redis at {where} failed ({detail}). Check "
                "redis_ssl_ca_certs/redis_ssl_ca_path (the CA that signed the server "
                "certificate), that the host name is in the certificate, and that the port "
                "is the server's TLS port."
            ) from exc
        if settings.uses_tls:
            hint = " With TLS, also check that the port is the server's TLS port (tls-port)."
        elif isinstance(exc, TimeoutError | RedisTimeoutError) or any(
            word in str(exc).lower() for word in ("reset", "closed")
        ):
            hint = " If that port speaks TLS, use a rediss:// URL (or redis_ssl=true)."
        else:
            hint = ""
        timed_out = isinstance(exc, TimeoutError | RedisTimeoutError)  # not for a refusal
        within = f" within {settings.redis_socket_connect_timeout}s" if timed_out else ""
        raise RedisConnectionError(
            f"cannot reach Redis at {where}{within}: {detail}. Check that the server "
            f"runs and REDIS_URL/redis_host/redis_port point at it.{hint}"
        ) from exc
