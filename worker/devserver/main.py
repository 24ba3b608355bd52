"""Run a :class:`DevServer` until SIGINT/SIGTERM: what ``trace-worker devserver`` calls."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from worker.devserver.lake import Lake, LakeConfig
from worker.devserver.memory import BATCH_ROWS
from worker.devserver.schemas import DictionaryKeys, SchemaOptions
from worker.devserver.server import DevServer, Mode

__all__ = ["serve"]


def serve(
    config: LakeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 50051,
    mode: Mode = "micromegas",
    token: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    dictionary_keys: DictionaryKeys = "int32",
    async_hash: bool = True,
    process_spans: bool = True,
    in_memory: bool = False,
    batch_rows: int = BATCH_ROWS,
    out: TextIO = sys.stdout,
) -> int:
    """Serve the lake of ``config`` until SIGINT or SIGTERM; print the address and processes first.

    With ``in_memory`` the whole lake is generated (and held) before the server listens.

    Returns:
        The exit status (0 after a clean stop).
    """
    tls = None
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise ValueError("--tls-cert and --tls-key go together")
        tls = (tls_cert.read_bytes(), tls_key.read_bytes())
    lake = Lake(config)
    server = DevServer(
        lake,
        host=host,
        port=port,
        mode=mode,
        token=token,
        tls=tls,
        schema_options=SchemaOptions(
            dictionary_keys=dictionary_keys, async_hash=async_hash, process_spans=process_spans
        ),
        in_memory=in_memory,
        batch_rows=batch_rows,
    )
    # The handler only flips a flag: taking a lock there (Event.set) can deadlock with the main
    # thread waiting on the same Event when the signal lands while it holds the Event's lock.
    stopping: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: stopping.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    server.start()  # with in_memory, generates the whole lake first
    try:
        auth = "bearer token" if token else "no auth"
        held = f", in memory: {server.memory.nbytes / 2**20:.0f} MiB" if server.memory is not None else ""
        settings = f"mode={mode}, {auth}, seed={config.seed}, scale={config.scale}{held}"
        print(f"listening on {server.url} ({settings})", file=out)
        print("process_id                            kind     exe  counts  time range", file=out)
        print(lake.describe(), file=out, flush=True)
        while not stopping:
            time.sleep(0.1)  # woken early by the signal; the flag is checked right after
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("devserver stopped", file=out, flush=True)
    return 0
