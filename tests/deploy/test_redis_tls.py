"""The chart's Redis TLS wiring against a real redis-server with TLS and client certificates.

The URL the chart gives the worker (``ssl_ca_certs`` / ``ssl_certfile`` / ``ssl_keyfile`` pointing at
the mounted Secret) is used as is, with the mount directory mapped to a temporary folder.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.support import render
from tests.support.redis_server import free_port

pytestmark = pytest.mark.redis
MOUNT = "/etc/trace-worker/redis-tls/"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _make_pki(folder: Path) -> None:
    """ca.crt, a server certificate for 127.0.0.1, and a client certificate (tls.crt / tls.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test ca"))
        .issuer_name(_name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for stem, cn, san in (("server", "127.0.0.1", True), ("tls", "trace-worker", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, folder / f"{stem}.key")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS and requires client certificates; yields (port, pki dir)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server not found; run scripts/dev setup"
    pki = tmp_path / "pki"
    pki.mkdir()
    _make_pki(pki)
    port = free_port()
    args = [
        binary,
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(pki / "server.crt"),
        "--tls-key-file", str(pki / "server.key"),
        "--tls-ca-cert-file", str(pki / "ca.crt"),
        "--tls-auth-clients", "yes",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_path),
        "--logfile", str(tmp_path / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = tmp_path / "redis.log"
        deadline = time.monotonic() + 60
        while not (log.exists() and "Ready to accept connections" in log.read_text(errors="replace")):
            assert proc.poll() is None, log.read_text(errors="replace") if log.exists() else "exited"
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.02)  # polling the server's readiness line, not synchronising the test
        yield port, pki
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _worker_url(port: int, pki: Path, *, client_cert: bool) -> str:
    values = {
        "config": {"redisUrl": f"rediss://127.0.0.1:{port}/0"},
        "redisTls": {"secretName": "redis-tls", "clientCert": client_cert},
    }
    url = str(render(values).one("ConfigMap")["data"]["TRACE_WORKER_REDIS_URL"])
    assert MOUNT in url
    return url.replace(MOUNT, f"{pki}{os.sep}")


def test_rendered_url_connects_with_tls_and_a_client_certificate(tls_redis: tuple[int, Path]) -> None:
    port, pki = tls_redis
    client = redis.Redis.from_url(_worker_url(port, pki, client_cert=True), socket_timeout=5)
    try:
        assert client.ping() is True
        assert client.set("k", "v") is True
    finally:
        client.close()


def test_without_the_client_certificate_the_server_refuses(tls_redis: tuple[int, Path]) -> None:
    port, pki = tls_redis
    client = redis.Redis.from_url(_worker_url(port, pki, client_cert=False), socket_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()
