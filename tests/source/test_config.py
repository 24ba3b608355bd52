"""FlightSqlConfig refuses a CA without a PEM certificate and a token it cannot send, before any query."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate

from tests.support.devserver import self_signed_cert
from worker.errors import InvalidRequest
from worker.source import FlightSqlConfig

CERT, KEY = self_signed_cert()
DER = load_pem_x509_certificate(CERT).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("ca", "says"),
    [
        (b"", "no -----BEGIN CERTIFICATE-----"),  # an empty file would silently mean system roots
        (DER, "a DER file? convert it"),
        (KEY, "not a PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "not a PEM certificate"),
    ],
)
def test_a_ca_without_a_pem_certificate_is_refused_in_one_line(ca: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest, match="the Flight SQL CA is not a PEM certificate") as caught:
        FlightSqlConfig("grpc+tls://127.0.0.1:1", tls_ca_pem=ca)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "ca",
    [
        CERT,
        KEY + CERT,  # a certificate with its key
        CERT.replace(b"\n", b"\r\n"),
        "# Főtanúsítvány\n".encode() + self_signed_cert("other")[0] + CERT,  # a system bundle's comments
        b"# \xe9 (Latin-1)\n" + CERT,
    ],
)
def test_a_ca_with_a_pem_certificate_is_taken(ca: bytes) -> None:
    assert FlightSqlConfig("grpc+tls://127.0.0.1:1", tls_ca_pem=ca).tls_ca_pem == ca


@pytest.mark.parametrize("token", ["t\u00f8ken", "line\nbreak", "trailing newline\n", "tab\there"])
def test_a_token_that_is_not_printable_ascii_is_refused(token: str) -> None:
    with pytest.raises(InvalidRequest, match="printable ASCII"):
        FlightSqlConfig("grpc://127.0.0.1:1", token=token)
