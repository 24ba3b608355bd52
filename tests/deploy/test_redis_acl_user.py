"""TRACE_WORKER_REDIS_USERNAME with TRACE_WORKER_REDIS_PASSWORD against a real redis-server whose
default user is off: the worker, the command-line client and the gateway all sign in as the ACL
user (none of them has the credentials in its URL), and a client without the user name is refused.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.devserver import small_lake, start_devserver
from tests.support.gateway_process import run_gateway
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer
from worker.inspect import inspect_trace

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "tw-worker", "pw with spaces/@:"


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    with start_devserver(small_lake()) as server:
        yield server


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_worker_cli_and_gateway_sign_in_as_the_acl_user(
    redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    admin = redis.Redis(port=redis_server.port, username="admin", password="admin-pw")
    with redis.Redis(port=redis_server.port) as default:
        default.execute_command("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
        default.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
        default.execute_command("ACL", "SETUSER", "default", "off")
    with admin:
        with pytest.raises(redis.AuthenticationError):  # the default user is refused from now on
            redis.Redis(port=redis_server.port).ping()
        env = worker_env(
            redis_server.url,  # no credentials in the URL
            devserver.url,
            (tmp_path / "blobs").as_uri(),
            TRACE_WORKER_REDIS_USERNAME=USER,
            TRACE_WORKER_REDIS_PASSWORD=PASSWORD,
        )
        spawn_worker(env)
        pid = devserver.lake.processes[0].process_id
        done = _cli(tmp_path, env, "request", pid, "--job-id", "acl-1", "-o", "acl.pftrace", "--quiet")
        assert done.returncode == 0, done.stderr
        assert inspect_trace(tmp_path / "acl.pftrace").ok
        for url_option in ((), ("--redis-url", redis_server.url)):  # the option's URL gets them too
            status = _cli(tmp_path, env, "status", "acl-1", *url_option)
            assert "state      succeeded" in status.stdout, status.stderr

        with run_gateway(env) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
            assert http.get("/readyz").json() == {"ready": True}
            assert http.get("/api/traces/acl-1").json()["state"] == "succeeded"

        # every connection the worker holds (and ours) is signed in as a named user
        users = {str(client["user"]) for client in admin.client_list()}
        assert users == {USER, "admin"}, users

        # the password alone signs in as the default user, which is off: refused, in one line
        without = {k: v for k, v in env.items() if k != "TRACE_WORKER_REDIS_USERNAME"}
        refused = _cli(tmp_path, without, "status", "acl-1")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert PASSWORD not in refused.stderr + refused.stdout
