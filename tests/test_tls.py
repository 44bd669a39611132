"""TLS from CommonAppSettings against a real redis-server with a TLS port (trustme certs)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from actionbus import CommonAppSettings, RedisManager
from actionbus.connection import create_redis_client, tls_options
from actionbus.embedded import RedisServer, free_port
from actionbus.exceptions import RedisConnectionError, RedisTLSError

KEY_PASSPHRASE = "kp-Secret-42"


class TlsServer:
    """A redis-server with a plain port (for readiness) and a TLS port."""

    def __init__(self, tmp: Path, ca: trustme.CA, hosts: tuple[str, ...], auth_clients: str):
        cert = ca.issue_cert(*hosts)
        cert.cert_chain_pems[0].write_to_path(str(tmp / "server.crt"))
        cert.private_key_pem.write_to_path(str(tmp / "server.key"))
        ca.cert_pem.write_to_path(str(tmp / "ca.crt"))
        self.tls_port = free_port()
        self.server = RedisServer(extra_args=[
            "--tls-port", str(self.tls_port), "--tls-cert-file", str(tmp / "server.crt"),
            "--tls-key-file", str(tmp / "server.key"), "--tls-ca-cert-file", str(tmp / "ca.crt"),
            "--tls-auth-clients", auth_clients,
        ])  # fmt: skip

    def url(self, host: str = "127.0.0.1") -> str:
        return f"rediss://{host}:{self.tls_port}/0"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA that signs the servers' and the client's certificates."""
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[TlsServer]:
    """A TLS server whose certificate names 127.0.0.1 only; client certificates optional."""
    server = TlsServer(tmp_path_factory.mktemp("tls"), ca, ("127.0.0.1",), "optional")
    with server.server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[TlsServer]:
    """A TLS server that requires a client certificate signed by the CA."""
    server = TlsServer(tmp_path_factory.mktemp("mtls"), ca, ("127.0.0.1",), "yes")
    with server.server:
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> dict[str, str]:
    """CA file, CA dir, a foreign CA, and a client certificate with an encrypted key."""
    tmp = tmp_path_factory.mktemp("client")
    ca.cert_pem.write_to_path(str(tmp / "ca.crt"))
    (tmp / "cadir").mkdir()
    ca.cert_pem.write_to_path(str(tmp / "cadir" / "ca.pem"))
    if shutil.which("openssl"):  # a CA directory holds OpenSSL's hashed names
        subprocess.run(["openssl", "rehash", str(tmp / "cadir")], check=True)
    trustme.CA().cert_pem.write_to_path(str(tmp / "other-ca.crt"))
    client = ca.issue_cert("client@example.com")
    client.cert_chain_pems[0].write_to_path(str(tmp / "client.crt"))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    (tmp / "client.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSPHRASE.encode()),
    ))  # fmt: skip
    return {name: str(tmp / name) for name in
            ("ca.crt", "cadir", "other-ca.crt", "client.crt", "client.key")}  # fmt: skip


def settings(url: str, **values: Any) -> CommonAppSettings:
    return CommonAppSettings(_env_file=None, service_name="tls", redis_url=url, **values)


async def roundtrip(s: CommonAppSettings) -> None:
    async with RedisManager(s) as manager:
        redis = manager.get_client()
        await redis.set("actionbus:dev:tls:k", "v")
        assert await redis.get("actionbus:dev:tls:k") == b"v"


async def test_ca_file_connects(tls_server: TlsServer, files: dict[str, str]) -> None:
    """redis_ssl_ca_certs makes a private CA trusted for a rediss:// URL."""
    await roundtrip(settings(tls_server.url(), redis_ssl_ca_certs=files["ca.crt"]))


async def test_ca_path_connects(tls_server: TlsServer, files: dict[str, str]) -> None:
    """redis_ssl_ca_path (a directory of CA files) is used too."""
    if not shutil.which("openssl"):
        pytest.skip("needs `openssl rehash` to build a CA directory")
    await roundtrip(settings(tls_server.url(), redis_ssl_ca_path=files["cadir"],
                             redis_ssl_ca_certs=None))  # fmt: skip


async def test_wrong_ca_is_refused(tls_server: TlsServer, files: dict[str, str]) -> None:
    """A server certificate from another CA fails with RedisTLSError naming what to check."""
    with pytest.raises(RedisTLSError, match="redis_ssl_ca_certs") as info:
        await roundtrip(settings(tls_server.url(), redis_ssl_ca_certs=files["other-ca.crt"]))
    assert "certificate verify failed" in str(info.value)


async def test_wrong_hostname_is_refused(tls_server: TlsServer, files: dict[str, str]) -> None:
    """A host name absent from the certificate is refused; turning the check off allows it."""
    with pytest.raises(RedisTLSError, match="host name"):
        await roundtrip(settings(tls_server.url("localhost"), redis_ssl_ca_certs=files["ca.crt"]))
    await roundtrip(settings(tls_server.url("localhost"), redis_ssl_ca_certs=files["ca.crt"],
                             redis_ssl_check_hostname=False))  # fmt: skip


async def test_verify_none_skips_ca(tls_server: TlsServer) -> None:
    """redis_ssl_cert_reqs=none connects without a CA (and without the hostname check)."""
    await roundtrip(settings(tls_server.url("localhost"), redis_ssl_cert_reqs="none"))


async def test_plaintext_to_tls_port_fails(tls_server: TlsServer) -> None:
    """A redis:// URL pointed at the TLS port fails suggesting rediss://."""
    with pytest.raises(RedisConnectionError, match="use a rediss:// URL"):
        await roundtrip(settings(f"redis://127.0.0.1:{tls_server.tls_port}/0",
                                 redis_socket_connect_timeout=2.0))  # fmt: skip


async def test_tls_to_plain_port_fails(tls_server: TlsServer, files: dict[str, str]) -> None:
    """A rediss:// URL pointed at a plain port fails naming the TLS port as a thing to check."""
    with pytest.raises(RedisConnectionError, match="tls-port"):
        await roundtrip(settings(f"rediss://127.0.0.1:{tls_server.server.port}/0",
                                 redis_ssl_ca_certs=files["ca.crt"],
                                 redis_socket_connect_timeout=1.0))  # fmt: skip


async def test_client_certificate_with_passphrase(
    mtls_server: TlsServer, files: dict[str, str]
) -> None:
    """A client certificate and encrypted key (redis_ssl_password) pass a server requiring them."""
    await roundtrip(settings(
        mtls_server.url(), redis_ssl_ca_certs=files["ca.crt"],
        redis_ssl_certfile=files["client.crt"], redis_ssl_keyfile=files["client.key"],
        redis_ssl_password=KEY_PASSPHRASE,
    ))  # fmt: skip


async def test_missing_client_certificate_is_refused(
    mtls_server: TlsServer, files: dict[str, str]
) -> None:
    """Without a client certificate a server requiring one refuses the connection."""
    with pytest.raises(RedisConnectionError):
        await roundtrip(settings(mtls_server.url(), redis_ssl_ca_certs=files["ca.crt"]))


def test_tls_options_without_tls_are_rejected() -> None:
    """TLS files on a plain redis:// connection are a configuration error, not silently unused."""
    with pytest.raises(ValueError, match="not TLS"):
        settings("redis://127.0.0.1:1/0", redis_ssl_ca_certs="/x.pem")


def test_key_passphrase_never_dumped(files: dict[str, str]) -> None:
    """redis_ssl_password is a secret in repr and dumps."""
    s = settings(
        "rediss://127.0.0.1:1/0", redis_ssl_certfile=files["client.crt"],
        redis_ssl_keyfile=files["client.key"], redis_ssl_password=KEY_PASSPHRASE,
    )  # fmt: skip
    assert KEY_PASSPHRASE not in repr(s) + s.model_dump_json() + str(s.model_dump())


async def test_cluster_client_takes_tls_options(files: dict[str, str]) -> None:
    """The cluster client accepts every TLS option (CA file and CA directory) without error."""
    s = settings("rediss://127.0.0.1:1/0", redis_cluster=True, redis_ssl_ca_path=files["cadir"],
                 redis_ssl_certfile=files["client.crt"], redis_ssl_keyfile=files["client.key"])
    options = tls_options(s, cluster=True)
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_check_hostname"] is True
    client = create_redis_client(s)
    await client.aclose()


async def test_sentinel_tls_options_reach_master(files: dict[str, str]) -> None:
    """With Sentinel and redis_ssl, the master's pool gets the TLS options."""
    s = CommonAppSettings(_env_file=None, service_name="tls", redis_sentinels=["127.0.0.1:1"],
                          redis_sentinel_master="m", redis_ssl=True,
                          redis_ssl_ca_certs=files["ca.crt"])  # fmt: skip
    client = create_redis_client(s)
    try:
        assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == files["ca.crt"]
    finally:
        await client.aclose()


class TlsCluster:
    """Three cluster masters whose clients and cluster bus speak TLS (plain port: admin only)."""

    def __init__(self, tmp: Path, ca: trustme.CA) -> None:
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp / "node.crt"))
        cert.private_key_pem.write_to_path(str(tmp / "node.key"))
        ca.cert_pem.write_to_path(str(tmp / "ca.crt"))
        self.nodes: list[tuple[RedisServer, int, int]] = []
        for _ in range(3):
            tls_port, bus_port = free_port(), free_port()
            server = RedisServer(extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--cluster-port", str(bus_port),
                "--tls-port", str(tls_port), "--tls-cluster", "yes",
                "--tls-cert-file", str(tmp / "node.crt"), "--tls-key-file", str(tmp / "node.key"),
                "--tls-ca-cert-file", str(tmp / "ca.crt"), "--tls-auth-clients", "optional",
            ])  # fmt: skip
            self.nodes.append((server, tls_port, bus_port))

    def start(self) -> None:
        for server, _, _ in self.nodes:
            server.start()
        for i, (server, _, _) in enumerate(self.nodes):
            with server.client() as conn:
                conn.cluster("SET-CONFIG-EPOCH", i + 1)
                conn.cluster("ADDSLOTS", *range(i * 16384 // 3, (i + 1) * 16384 // 3))
        with self.nodes[0][0].client() as conn:
            for _, tls_port, bus_port in self.nodes[1:]:
                conn.execute_command("CLUSTER", "MEET", "127.0.0.1", tls_port, bus_port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = []
            for server, _, _ in self.nodes:
                with server.client() as conn:
                    info = conn.cluster("INFO")
                    states.append(info["cluster_state"] == "ok" and
                                  int(info["cluster_known_nodes"]) == 3)  # fmt: skip
            if all(states):
                return
            time.sleep(0.05)
        raise AssertionError("TLS cluster did not converge")

    def cleanup(self) -> None:
        for server, _, _ in self.nodes:
            server.cleanup()

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.nodes[0][1]}/0"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[TlsCluster]:
    """A 3-master Redis Cluster over TLS (clients and bus)."""
    cluster = TlsCluster(tmp_path_factory.mktemp("tls-cluster"), ca)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


async def test_cluster_over_tls(tls_cluster: TlsCluster, files: dict[str, str]) -> None:
    """With redis_cluster and the CA file, keys on every master are reached over TLS."""
    s = settings(tls_cluster.url, redis_cluster=True, redis_ssl_ca_certs=files["ca.crt"])
    async with RedisManager(s) as manager:
        redis = manager.get_client()
        for i in range(30):  # spread over the three masters' slots
            await redis.set(f"actionbus:dev:svc{i}:k", i)
        assert [int(await redis.get(f"actionbus:dev:svc{i}:k")) for i in range(30)] == list(
            range(30)
        )
        assert len(redis.get_primaries()) == 3


async def test_cluster_with_wrong_ca_is_refused(
    tls_cluster: TlsCluster, files: dict[str, str]
) -> None:
    """A cluster whose certificates come from another CA is refused with RedisTLSError."""
    s = settings(tls_cluster.url, redis_cluster=True, redis_ssl_ca_certs=files["other-ca.crt"])
    with pytest.raises(RedisTLSError, match="certificate verify failed"):
        await RedisManager(s).initialize()
