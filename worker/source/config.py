"""Connection settings of the Flight SQL source, as a plain value independent of the settings model."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from worker.errors import InvalidRequest

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["FlightSqlConfig"]

_SCHEMES = ("grpc://", "grpc+tcp://", "grpc+tls://")


@dataclass(frozen=True)
class FlightSqlConfig:
    """Where and how to reach the Flight SQL service.

    Attributes:
        url: ``grpc://host:port`` (plain) or ``grpc+tls://host:port``; ``http://`` and ``https://``
            (upstream's spelling) are accepted as aliases of those two.
        token: Bearer token sent as ``authorization: Bearer <token>`` (printable ASCII: an HTTP/2
            header value).
        tls_ca_pem: PEM of the CA that signs the server's certificate (checked to hold at least
            one); default: system roots.
        tls_skip_verify: Accept any server certificate (development only).
        preserve_dictionary: Ask for dictionary-encoded strings (less data on the wire).
        concurrency: How many threads' spans are fetched at once (one connection each).
        batch_timeout_s: Longest wait for the next answer of a query (its plan or a record batch)
            before the read fails with SourceBroken; None waits forever.
        max_threads: Most threads one trace may cover; a longer thread list fails with
            TraceTooLarge before any span query (each thread costs a query and a track).
        direct_tickets: ``auto``: skip GetFlightInfo once the server's first answer shows that its
            ticket is the statement itself (Micromegas); ``on``: always skip it; ``off``: never
            (see :mod:`worker.source.tickets`).
        process_spans_max_objects: Read all threads' spans with one ``process_spans`` query when
            the thread list's object counts (``blocks.nb_objects``) sum to at most this; 0: never.

    Raises:
        InvalidRequest: a bad URL, concurrency or object count; a token that is not printable
            ASCII; a CA that holds no PEM certificate.
    """

    url: str
    token: str | None = None
    tls_ca_pem: bytes | None = None
    tls_skip_verify: bool = False
    preserve_dictionary: bool = True
    concurrency: int = 4
    batch_timeout_s: float | None = 300.0
    max_threads: int = 10_000
    direct_tickets: Literal["auto", "on", "off"] = "auto"
    process_spans_max_objects: int = 50_000

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidRequest(f"concurrency must be at least 1: {self.concurrency}")
        if self.process_spans_max_objects < 0:
            raise InvalidRequest(f"process_spans_max_objects must be >= 0: {self.process_spans_max_objects}")
        object.__setattr__(self, "url", normalise_url(self.url))
        # Both are checked here because the two Flight clients judge them differently when a query
        # runs: ADBC's Go driver refuses a bad CA ("failed to append certificates"), gRPC under
        # pyarrow.flight only fails each handshake, and a token it cannot send as a header fails
        # the call as if the server broke, so a bad setting looked retryable.
        if self.token is not None and not (self.token.isascii() and self.token.isprintable()):
            message = "the Flight SQL token must be printable ASCII (it is sent as an HTTP/2 header)"
            raise InvalidRequest(message)
        if self.tls_ca_pem is not None:  # an empty file too: it would silently mean system roots
            _check_ca(self.tls_ca_pem)

    @property
    def tls(self) -> bool:
        return self.url.startswith("grpc+tls://")

    @classmethod
    def from_settings(cls, s: Settings) -> FlightSqlConfig:
        """The source configuration from the worker's settings (reads the CA file, if any).

        Raises:
            InvalidRequest: the CA file cannot be read.
        """
        ca: bytes | None = None
        if s.flightsql_tls_ca:
            try:
                ca = Path(s.flightsql_tls_ca).read_bytes()
            except OSError as exc:
                message = f"cannot read the Flight SQL CA file {s.flightsql_tls_ca}: {exc}"
                raise InvalidRequest(message) from exc
        return cls(
            url=s.flightsql_url,
            token=s.flightsql_token.get_secret_value() if s.flightsql_token else None,
            tls_ca_pem=ca,
            tls_skip_verify=s.flightsql_tls_skip_verify,
            preserve_dictionary=s.flightsql_preserve_dictionary,
            concurrency=s.flightsql_concurrency,
            batch_timeout_s=s.flightsql_batch_timeout_s or None,
            max_threads=s.flightsql_max_threads,
            direct_tickets=s.flightsql_direct_tickets,
            process_spans_max_objects=s.flightsql_process_spans_max_objects,
        )


#: Bytes over 127 as ``?``: text between a bundle's PEM blocks may be UTF-8 (Fedora's and RHEL's
#: system bundle names "NetLock Arany (Class Gold) Főtanúsítvány"), and every
#: PEM reader (OpenSSL's, Go's) skips it, while ``cadata`` must be ASCII.
_ASCII = bytes(range(128)) + b"?" * 128


def _check_ca(pem: bytes) -> None:
    """Raise InvalidRequest unless ``pem`` holds at least one PEM certificate (OpenSSL's reading)."""
    if b"-----BEGIN" not in pem:
        binary = any(b < 9 or 13 < b < 32 for b in pem[:64])
        hint = " (a DER file? convert it: openssl x509 -inform DER -in CA -out CA.pem)" if binary else ""
        message = f"the Flight SQL CA is not a PEM certificate: no -----BEGIN CERTIFICATE-----{hint}"
        raise InvalidRequest(message)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=pem.translate(_ASCII).decode("ascii")
        )
    except (ssl.SSLError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
        raise InvalidRequest(f"the Flight SQL CA is not a PEM certificate: {reason}") from exc


def normalise_url(url: str) -> str:
    """``http://`` → ``grpc://`` and ``https://`` → ``grpc+tls://``; other schemes are refused.

    Raises:
        InvalidRequest: the scheme is not a gRPC one.
    """
    if url.startswith("http://"):
        return "grpc://" + url.removeprefix("http://")
    if url.startswith("https://"):
        return "grpc+tls://" + url.removeprefix("https://")
    if not url.startswith(_SCHEMES) or "://" not in url or not url.split("://", 1)[1]:
        raise InvalidRequest(f"Flight SQL URL must be grpc://host:port or grpc+tls://host:port: {url!r}")
    return url
