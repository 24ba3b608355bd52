"""Development Flight SQL servers for tests: in-process (:class:`DevServer`) or as a subprocess.

In-process servers share this process's gRPC threads and stop cleanly; a subprocess server can be
killed (SIGKILL) mid-stream to test a server that dies. Both serve the same deterministic lake.

Fixtures to use from a conftest (or import the helpers)::

    from tests.support.devserver import small_lake, start_devserver, run_devserver_subprocess

    def test_x() -> None:
        with start_devserver(small_lake(), mode="friendly") as server:
            ...  # server.url, server.lake.processes
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from worker.devserver import DevServer, Lake, LakeConfig, Mode, SchemaOptions
from worker.devserver import async_events as _async_events
from worker.devserver import thread_spans as _thread_spans

__all__ = [
    "DevServerProcess",
    "expected_async_events",
    "expected_thread_spans",
    "rfc3339",
    "run_devserver_subprocess",
    "self_signed_cert",
    "small_devserver",
    "small_lake",
    "start_devserver",
]

ROOT = Path(__file__).resolve().parents[2]


def small_lake(seed: int = 42, processes: tuple[str, ...] = ("small",), scale: float = 1.0) -> Lake:
    """A lake cheap enough for any test: by default one ~10k-span process with 5 threads."""
    return Lake(LakeConfig(seed=seed, scale=scale, processes=processes))


def start_devserver(
    lake: Lake | None = None,
    *,
    mode: Mode = "micromegas",
    token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
    schema_options: SchemaOptions | None = None,
    in_memory: bool = False,
) -> DevServer:
    """A started in-process server on a free loopback port (use it as a context manager).

    ``in_memory`` generates the whole lake at start and serves it from memory (faster, for
    benchmarks; same rows as the default on-the-fly mode)."""
    return DevServer(
        lake or small_lake(),
        mode=mode,
        token=token,
        tls=tls,
        schema_options=schema_options,
        in_memory=in_memory,
    ).start()


@pytest.fixture(scope="session")
def small_devserver() -> Iterator[DevServer]:
    """A session-wide Micromegas-mode server over :func:`small_lake` (import it into a conftest)."""
    with start_devserver(small_lake()) as server:
        yield server


def rfc3339(ns: int) -> str:
    """Epoch nanoseconds as RFC 3339 with nine fractional digits (what the range headers take)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def expected_thread_spans(
    lake: Lake, stream_id: str, begin_ns: int | None = None, end_ns: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Exactly the thread_spans rows the server holds for a stream overlapping the range
    (``begin <= end_ns AND end >= begin_ns``), streamed block by block, strings plain."""
    yield from _thread_spans(lake, stream_id, SchemaOptions(dictionary_keys="plain"), begin_ns, end_ns)


def expected_async_events(
    lake: Lake, process_id: str, begin_ns: int | None = None, end_ns: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Exactly the async_events rows the server holds with ``time`` in the range, strings plain."""
    yield from _async_events(lake, process_id, SchemaOptions(dictionary_keys="plain"), begin_ns, end_ns)


def self_signed_cert(hostname: str = "localhost") -> tuple[bytes, bytes]:
    """(cert_pem, key_pem) for ``hostname`` and 127.0.0.1, valid one day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# Runs only the devserver command, so the subprocess does not depend on other subcommands.
_BOOT = (
    "import argparse, sys\n"
    "from worker.commands import devserver\n"
    "p = argparse.ArgumentParser(prog='trace-worker')\n"
    "devserver.register(p.add_subparsers(dest='command'))\n"
    "a = p.parse_args(['devserver', *sys.argv[1:]])\n"
    "sys.exit(a.handler(a))\n"
)


@dataclass
class DevServerProcess:
    """A ``trace-worker devserver`` subprocess. :attr:`url` is known once it is listening."""

    proc: subprocess.Popen[str]
    url: str
    #: Every line the server printed so far (filled by a reader thread).
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def kill(self) -> None:
        """SIGKILL: the server dies at once, mid-stream if a stream is open."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the clean exit; returns the exit status."""
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill if still running, then release the pipe (after the reader saw its end)."""
        if self.proc.poll() is None:
            self.kill()
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> DevServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_devserver_subprocess(
    args: Sequence[str] = (), *, timeout: float = 60.0, in_memory: bool = False
) -> DevServerProcess:
    """Start ``trace-worker devserver --port 0 ARGS`` and wait until it listens.

    Args:
        args: Extra command-line flags, e.g. ``["--processes", "small", "--mode", "friendly"]``.
        timeout: Seconds to wait for the "listening on" line (at least 300 with ``in_memory``, which
            generates the whole lake before listening).
        in_memory: Add ``--in-memory``: serve the lake held in memory.

    Raises:
        RuntimeError: the server exited or did not listen in time (its output is in the message).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if in_memory:
        args, timeout = [*args, "--in-memory"], max(timeout, 300.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOT, "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
    while True:
        left = (deadline - dt.datetime.now()).total_seconds()
        try:
            line = lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            DevServerProcess(proc, "", output, reader).close()
            raise RuntimeError("devserver did not listen in time:\n" + "".join(output)) from None
        if line is None:
            DevServerProcess(proc, "", output, reader).close()
            raise RuntimeError("devserver exited before listening:\n" + "".join(output))
        if line.startswith("listening on "):
            return DevServerProcess(proc, line.split()[2], output, reader)
