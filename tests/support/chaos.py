"""Fault injection for tests: a TCP proxy on loopback that can stall, trickle, cut or refuse
connections, and helpers to look for what a fault may leave behind (keys, staged blob files).

Put the proxy between a worker and Flight SQL or Redis::

    with ChaosProxy(("127.0.0.1", server.port)) as proxy:
        env = worker_env(redis_url, f"grpc://127.0.0.1:{proxy.port}", blob_url)
        ...
        proxy.cut_after(200_000)  # the next connection dies after 200 kB towards the client
        proxy.set_refusing(True)  # new connections are closed at once, open ones cut

Threads only (one per direction per connection); everything stops with :meth:`ChaosProxy.close`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

__all__ = ["ChaosProxy", "Mode", "blob_leftovers", "scan_keys"]

#: pass: forward as fast as possible; stall: hold every byte (connections stay open); trickle:
#: forward towards the client at ``trickle_bps`` bytes per second; mute: forward to the server, hold
#: every byte towards the client (the server did the command, its reply has not come back yet).
Mode = Literal["pass", "stall", "trickle", "mute"]

_POLL_S = 0.05
_BUF = 64 * 1024


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    #: Bytes sent towards the client so far.
    down_bytes: int = 0
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class ChaosProxy:
    """A loopback TCP proxy to ``target`` with switchable faults.

    Args:
        target: ``(host, port)`` of the real server.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode: Mode = "pass"
        self.trickle_bps = 2048
        self._refusing = False
        self._cut_after: int | None = None
        self._cut_once = False
        #: Connections accepted so far (cut or not).
        self.accepted = 0
        #: Connections cut by :meth:`cut_after`.
        self.cuts = 0
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    # -- faults
    def set_mode(self, mode: Mode, trickle_bps: int | None = None) -> None:
        """Switch every connection (open and future) to ``mode``."""
        if trickle_bps is not None:
            self.trickle_bps = trickle_bps
        self.mode = mode

    def set_refusing(self, refusing: bool) -> None:
        """While refusing, open connections are cut and new ones closed at once (server unreachable)."""
        self._refusing = refusing
        if refusing:
            self.cut_all()

    def cut_all(self) -> None:
        """Close every open connection now (both ends see a reset / EOF)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def cut_after(self, down_bytes: int | None, *, once: bool = False) -> None:
        """Cut each connection once it has sent ``down_bytes`` towards the client (None: never);
        with ``once``, only the first connection that gets there."""
        self._cut_after = down_bytes
        self._cut_once = once

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.closed)

    # -- plumbing
    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.append(conn)
            self._spawn(self._pump, conn, client, upstream, False)
            self._spawn(self._pump, conn, upstream, client, True)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        pending = b""
        try:
            while not self._stop.is_set() and not conn.closed:
                if self.mode == "stall" or (downstream and self.mode == "mute"):
                    time.sleep(_POLL_S)  # holding bytes is the fault being injected
                    continue
                if not pending:
                    ready, _, _ = select.select([src], [], [], _POLL_S)
                    if not ready:
                        continue
                    data = src.recv(_BUF)
                    if not data:
                        break
                    pending = data
                    # Back to the top: the mode may have changed while select waited, and bytes that
                    # arrive after a stall began must be held (a fast answer raced through before).
                    continue
                if downstream and self.mode == "trickle":
                    step = max(1, self.trickle_bps // 20)
                    piece, pending = pending[:step], pending[step:]
                    time.sleep(0.05)  # the trickle's pace
                else:
                    piece, pending = pending, b""
                cut = self._cut_after
                if downstream and cut is not None and conn.down_bytes + len(piece) >= cut:
                    with self._lock:
                        if self._cut_after is None:  # a `once` cut already happened elsewhere
                            dst.sendall(piece)
                            conn.down_bytes += len(piece)
                            continue
                        self.cuts += 1
                        if self._cut_once:
                            self._cut_after = None
                    break
                dst.sendall(piece)
                if downstream:
                    conn.down_bytes += len(piece)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        """Stop accepting, cut everything, join the threads."""
        self._stop.set()
        self._listener.close()
        self.cut_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scan_keys(redis_url: str) -> list[str]:
    """Every key in the Redis database (SCAN, never KEYS), decoded with replacement."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode(errors="replace") for k in client.scan_iter(count=1000))
    finally:
        client.close()


def blob_leftovers(root: Path) -> Iterator[Path]:
    """Files under a local blob folder that are not a finished trace or its checksum sidecar:
    staged ``<name>#<n>`` files, stray temporaries, anything else."""
    for path in root.rglob("*"):
        if path.is_file() and (
            "#" in path.name or not path.name.endswith((".pftrace", ".pftrace.meta.json"))
        ):
            yield path
