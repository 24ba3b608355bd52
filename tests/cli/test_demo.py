"""`trace-worker demo` through its real entry point: with no Redis running, with the settings' Redis,
without a redis-server binary, and stopped by SIGINT, SIGTERM or SIGHUP (also with SIGINT ignored, and
a second signal during the teardown). Nothing may be left running, nor any key in a named Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.processes import running
from tests.support.redis_server import RedisServer, free_port
from worker.inspect import inspect_trace

ROOT = Path(__file__).resolve().parents[2]


def demo_env(tmp_path: Path, redis_url: str | None = None, path: str | None = None) -> dict[str, str]:
    """No TRACE_WORKER_* but the Redis URL when given; the demo's temporary folders under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}
    env.update({"PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp"), "PYTHONFAULTHANDLER": "1"})
    if redis_url is not None:
        env["TRACE_WORKER_REDIS_URL"] = redis_url
    if path is not None:
        env["PATH"] = path
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


#: Generous: the demo builds a lake and starts three services, on a machine that may be busy.
DEMO_S = 420.0
pytestmark = pytest.mark.timeout(600)


Demo = AbstractAsyncContextManager[asyncio.subprocess.Process]


#: Starts the demo with SIGINT ignored, as a non-interactive shell starts ``trace-worker demo &``
#: (exec keeps an ignored disposition).
SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, '-m', 'worker', 'demo', *sys.argv[1:]])"
)


def start_demo(tmp_path: Path, env: dict[str, str], *args: str, sigint_ignored: bool = False) -> Demo:
    """The demo in its own process group, killed with everything it started when the block ends."""
    start = ("-c", SIGINT_IGNORED) if sigint_ignored else ("-m", "worker", "demo")
    return running(
        sys.executable, *start, *args,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def read_until(stream: asyncio.StreamReader | None, want: str, collected: list[str]) -> None:
    """Read lines (into ``collected``) until one contains ``want``; the demo's readiness signals."""
    assert stream is not None
    async with asyncio.timeout(DEMO_S):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"demo exited before printing {want!r}: {''.join(collected)[-3000:]}"
            collected.append(line)
            if want in line:
                return


def processes_using(tmp_path: Path) -> list[str]:
    """Live processes whose command line or working directory lies under ``tmp_path``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (str(tmp_path) in cmdline or cwd.startswith(str(tmp_path))) and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


async def test_demo_starts_a_private_redis_unless_one_is_named(tmp_path: Path) -> None:
    # This machine may run a Redis on 127.0.0.1:6379 (the default URL): the demo must not use it.
    async with start_demo(tmp_path, demo_env(tmp_path), "-o", "demo.pftrace") as proc:
        out, err = await asyncio.wait_for(proc.communicate(), DEMO_S)
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stderr
    assert "(private redis-server)" in stderr and "devserver  grpc://127.0.0.1:" in stderr
    assert "6379" not in stderr
    assert "succeeded attempt 1" in stderr  # progress shown
    trace = tmp_path / "demo.pftrace"
    report = inspect_trace(trace)
    assert report.ok and report.slices > 1000
    assert f"trace      {trace.resolve()}" in stdout
    assert f"({trace.stat().st_size:,} bytes)" in stdout
    assert "no defects" in stdout and "ui.perfetto.dev" in stdout
    assert processes_using(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # work folder removed after a success


async def test_demo_uses_a_named_redis_and_cleans_up(redis_server: RedisServer, tmp_path: Path) -> None:
    async with start_demo(tmp_path, demo_env(tmp_path, redis_server.url), "--quiet") as proc:
        _out, err = await asyncio.wait_for(proc.communicate(), DEMO_S)
    assert proc.returncode == 0, err.decode()
    assert "(named; keys under tw-demo-" in err.decode()
    assert (tmp_path / "demo.pftrace").stat().st_size > 0
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await redis.keys("*") == []  # the demo's keys are gone
    finally:
        await redis.aclose()
    assert processes_using(tmp_path) == []


async def test_a_named_redis_that_does_not_answer_is_the_one_line_error(tmp_path: Path) -> None:
    nothing = f"redis://127.0.0.1:{free_port()}/0"
    async with start_demo(tmp_path, demo_env(tmp_path), "--redis-url", nothing) as proc:
        _out, err = await asyncio.wait_for(proc.communicate(), DEMO_S)
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        f"trace-worker demo: cannot reach the Redis named by --redis-url or the settings: {nothing}"
    ]
    assert processes_using(tmp_path) == [] and list((tmp_path / "tmp").iterdir()) == []


async def test_demo_without_redis_server_binary_says_how_to_install_first(tmp_path: Path) -> None:
    env = demo_env(tmp_path, path=str(tmp_path / "empty-bin"))
    async with start_demo(tmp_path, env) as proc:
        _out, err = await asyncio.wait_for(proc.communicate(), DEMO_S)
    lines = err.decode().splitlines()
    assert proc.returncode == 2
    # The cause alone: no "stopping the services", no "logs kept in" an empty folder before it.
    assert len(lines) == 1, lines
    assert "no redis-server on PATH" in lines[0] and "apt-get install redis-server" in lines[0]
    assert processes_using(tmp_path) == [] and list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("sigs", "code", "sigint_ignored"),
    [
        ((signal.SIGINT,), 130, False),
        ((signal.SIGTERM,), 143, False),
        ((signal.SIGHUP,), 129, False),  # the terminal was closed
        # started with `&` from a script: SIGINT stays ignored, SIGTERM still stops everything
        ((signal.SIGINT, signal.SIGTERM), 143, True),
    ],
    ids=["sigint", "sigterm", "sighup", "sigint-ignored-then-sigterm"],
)
async def test_interrupt_stops_everything(
    tmp_path: Path, sigs: tuple[signal.Signals, ...], code: int, sigint_ignored: bool
) -> None:
    args = ("--process", "large", "-o", "big.pftrace")
    async with start_demo(tmp_path, demo_env(tmp_path), *args, sigint_ignored=sigint_ignored) as proc:
        assert proc.stderr is not None
        async with asyncio.timeout(DEMO_S):  # readiness: the demo says when its job is submitted
            while not (line := (await proc.stderr.readline()).decode()).startswith("job "):
                assert line, "demo exited before submitting its job"
        for sig in sigs:  # to the demo only, not its children (a service manager's stop)
            proc.send_signal(sig)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            # Where it hangs: PYTHONFAULTHANDLER makes SIGABRT dump every thread's stack to stderr.
            proc.send_signal(signal.SIGABRT)
            rest = await asyncio.wait_for(proc.stderr.read(), 60)
            pytest.fail(f"demo still running 120 s after {sigs}:\n{rest.decode(errors='replace')}")
        # Checked before the block kills the demo's process group: the demo itself stopped them all.
        assert processes_using(tmp_path) == []
    assert proc.returncode == code, err.decode()
    assert "stopping the services" in err.decode() and "Traceback" not in err.decode()
    assert not (tmp_path / "big.pftrace").exists() and not (tmp_path / "big.pftrace.part").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # work folder removed


@pytest.mark.parametrize("when", ["second-sigint-while-stopping", "sigterm-after-succeeded"])
async def test_a_named_redis_keeps_no_demo_key_however_it_is_stopped(
    redis_server: RedisServer, tmp_path: Path, when: str
) -> None:
    env = demo_env(tmp_path, redis_server.url)
    seen: list[str] = []
    async with start_demo(tmp_path, env, "-o", "n.pftrace") as proc:
        if when == "second-sigint-while-stopping":
            await read_until(proc.stderr, "job ", seen)
            proc.send_signal(signal.SIGINT)
            await read_until(proc.stderr, "stopping the services", seen)
            proc.send_signal(signal.SIGINT)  # impatient: the teardown must still remove the keys
            codes: tuple[int, ...] = (130,)
        else:
            await read_until(proc.stderr, "succeeded", seen)
            proc.send_signal(signal.SIGTERM)  # lands while the services stop (or, late, after)
            codes = (143, 0)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert processes_using(tmp_path) == []
    assert proc.returncode in codes, "".join(seen) + err.decode()
    assert "Traceback" not in err.decode()
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await redis.keys("*") == []  # no tw-demo-* key left in the user's Redis
    finally:
        await redis.aclose()
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_demo_with_the_gateway_serves_the_page_until_ctrl_c(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import httpx  # noqa: PLC0415 - only this test talks HTTP

    env = demo_env(tmp_path, redis_server.url)
    async with start_demo(tmp_path, env, "--gateway", "--quiet", "-o", "g.pftrace") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(DEMO_S):  # readiness: the demo prints the page's URL
            while "Ctrl-C" not in (line := (await proc.stdout.readline()).decode()):
                assert line, f"demo exited: {(await proc.stderr.read()).decode()[-2000:]}"
        url = line.split()[2]
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            processes = (await http.get("/api/processes")).json()["items"]
            assert len(processes) == 1
            jobs = (await http.get("/api/traces")).json()["items"]
            assert [j["state"] for j in jobs] == ["succeeded"]  # the demo's own request
            assert 'id="process-table"' in (await http.get("/")).text
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert processes_using(tmp_path) == []
    assert proc.returncode == 130, err.decode()
    assert (tmp_path / "g.pftrace").exists()
