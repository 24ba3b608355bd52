"""Blob-store benchmark: streamed write and read throughput, and the writer's memory, for the local
folder and S3 (a moto server subprocess on loopback, so its storage is not counted as ours).

Writes objects of two sizes in 1 MiB pieces; the writer's peak RSS growth should not depend on the
object size (streamed multipart: about (max_concurrency + 1) x part size in flight).

    .venv/bin/python -m bench.bench_blob [--sizes-mib 64 512] [--backends local s3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3

from tests.support.redis_server import free_port
from worker.sinks.blob import BlobStore, blob_store_from_url

PIECE = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRss:
    """Samples this process's RSS every 10 ms while active."""

    def __enter__(self) -> PeakRss:
        self.base = rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


async def one(store: BlobStore, size_mib: int) -> tuple[float, float, float]:
    piece = os.urandom(PIECE)
    key = f"bench/obj-{size_mib}.pftrace"
    with PeakRss() as mem:
        started = time.perf_counter()
        writer = await store.open_writer(key)
        for _ in range(size_mib):
            await writer.write(piece)
        info = await writer.commit()
        write_s = time.perf_counter() - started
    assert info.size == size_mib * PIECE
    started = time.perf_counter()
    total = 0
    async for chunk in await store.open_reader(key):
        total += len(chunk)
    read_s = time.perf_counter() - started
    assert total == info.size
    await store.delete(key)
    return size_mib / write_s, size_mib / read_s, mem.growth_mib


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket="bench")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # waiting for the server to listen
    client.close()
    return proc, endpoint


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--backends", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    args = parser.parse_args()
    print(f"{'backend':<7} {'size':>8} {'write MiB/s':>12} {'read MiB/s':>11} {'writer RSS growth':>18}")
    for backend in args.backends:
        tmp = Path(tempfile.mkdtemp(prefix="bench-blob-"))
        moto: subprocess.Popen[bytes] | None = None
        try:
            if backend == "local":
                store = blob_store_from_url(tmp.as_uri())
            else:
                moto, endpoint = start_moto()
                store = blob_store_from_url(
                    "s3://bench/p",
                    endpoint=endpoint,
                    access_key_id="k",
                    secret_access_key="s",
                    allow_http=True,
                )
            for size in args.sizes_mib:
                write, read, growth = await one(store, size)
                print(f"{backend:<7} {size:>5} MiB {write:>12.0f} {read:>11.0f} {growth:>14.1f} MiB")
            await store.aclose()
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
