"""Static checks of the image build (Dockerfile, .dockerignore); there is no Docker engine here.

The HEALTHCHECK command itself is executed against a real HTTP server standing in for the worker.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.dockerfile import Stage, parse_dockerfile
from tests.deploy.support import ROOT
from worker.settings import Settings

BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "cargo", "rustc", "apt-get install", "pip install")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(ROOT / "Dockerfile")[1]


def test_multi_stage_with_the_same_slim_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name == "build"
    assert final.base == build.base
    assert "slim" in final.base
    assert final.base.startswith("python:3.11")  # the version CI tests (pyproject requires-python >=3.11)


def test_final_stage_runs_as_an_unprivileged_user(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "no USER in the final stage"
    uid_arg = {i.args.split("=")[0]: i.args.split("=")[1] for i in final.all("ARG")}
    user = users[-1].args.split(":")[0].replace("${APP_UID}", uid_arg.get("APP_UID", ""))
    assert user not in ("", "0", "root")
    assert int(user) >= 1000
    # Matches the Helm chart's runAsUser, so the pod's securityContext and the image agree.
    values = yaml.safe_load((ROOT / "helm/trace-worker/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(user)
    # Nothing after USER switches back to root.
    after = final.instructions[final.instructions.index(users[-1]) :]
    assert not [i for i in after if i.keyword == "USER" and i.args.split(":")[0] in ("0", "root")]


def test_final_stage_has_no_build_tools_or_caches(stages: list[Stage]) -> None:
    final = stages[-1]
    text = final.text().lower()
    for tool in BUILD_TOOLS:
        assert tool not in text, f"{tool!r} in the final stage"
    copies = final.all("COPY")
    assert copies and all(c.flags().get("from") == "build" for c in copies)
    assert [c.args.split()[-1] for c in copies] == ["/opt/venv"]
    build = stages[0].text()
    assert "PIP_NO_CACHE_DIR=1" in build  # no wheel cache inside the copied tree either


def test_build_installs_the_locked_runtime_dependencies_then_the_project(stages: list[Stage]) -> None:
    runs = [r.args for r in stages[0].all("RUN")]
    install_deps = next(r for r in runs if "-c requirements.lock" in r)
    install_project = next(r for r in runs if "pip install --no-deps --no-build-isolation ." in r)
    assert runs.index(install_deps) < runs.index(install_project)
    copied = [c.args.split()[0] for c in stages[0].all("COPY")]
    assert copied[0] == "requirements.lock"
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]["include"]:
        assert package.rstrip("*") in copied


def test_the_build_backend_is_pinned(stages: list[Stage]) -> None:
    # No isolated build environment (it would download an unpinned setuptools): the project is built
    # against an exact setuptools installed first, which satisfies pyproject's build-system.
    build = stages[0]
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in build.all("ARG") if "=" in i.args}
    run = next(r.args for r in build.all("RUN") if "pip install --no-deps" in r.args)
    steps = [s.strip() for s in run.split("&&")]
    assert steps[0] == 'pip install "setuptools==${SETUPTOOLS_VERSION}"'
    assert steps[1] == "pip install --no-deps --no-build-isolation ."
    pinned = Version(args["SETUPTOOLS_VERSION"])
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (backend,) = [Requirement(r) for r in requires]
    assert canonicalize_name(backend.name) == "setuptools"
    assert backend.specifier.contains(pinned), (backend, pinned)
    # ...and the build tool does not reach the runtime virtualenv.
    assert "pip uninstall -y setuptools pip" in steps


def _runtime_closure() -> set[str]:
    """Names of every distribution trace-worker needs at run time (dependencies of dependencies too)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in metadata.requires("trace-worker") or [] if "extra ==" not in r]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        extras = req.extras
        for sub in metadata.requires(req.name) or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or any(sub_req.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append(sub_req)
    return seen


def test_the_lock_pins_every_runtime_dependency() -> None:
    # The image installs pyproject's dependencies with requirements.lock as constraints: every
    # distribution they pull in must be pinned there, or the image drifts from what CI tested.
    pinned = {
        canonicalize_name(line.split("==")[0])
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    closure = _runtime_closure()
    assert {"pyarrow", "faststream", "redis", "obstore"} <= closure
    assert sorted(closure - pinned) == []


def test_runs_trace_worker_run_and_exposes_the_http_port(stages: list[Stage]) -> None:
    final = stages[-1]
    entrypoint = final.all("ENTRYPOINT")[-1].exec_form()
    cmd = final.all("CMD")[-1].exec_form()
    assert entrypoint + cmd == ["trace-worker", "run"]
    port = str(Settings.model_fields["http_port"].default)
    assert final.all("EXPOSE")[-1].args == port
    env = " ".join(i.args for i in final.all("ENV"))
    assert f"TRACE_WORKER_HTTP_PORT={port}" in env
    assert "TRACE_WORKER_HTTP_HOST=0.0.0.0" in env  # reachable from outside the container


def test_image_environment_names_are_settings(stages: list[Stage]) -> None:
    names = {f"TRACE_WORKER_{f}".upper() for f in Settings.model_fields}
    env = " ".join(i.args for i in stages[-1].all("ENV"))
    used = {w.split("=")[0] for w in env.split() if w.startswith("TRACE_WORKER_")}
    assert used and used <= names, used - names


def test_root_filesystem_can_be_read_only(stages: list[Stage]) -> None:
    # No bytecode written at run time; the writable places are volumes.
    final = stages[-1]
    assert "PYTHONDONTWRITEBYTECODE=1" in " ".join(i.args for i in final.all("ENV"))
    assert "compileall" in stages[0].text()
    assert final.all("VOLUME")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/livez" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _run_healthcheck(stages: list[Stage], port: int) -> int:
    check = stages[-1].all("HEALTHCHECK")[-1]
    argv = check.exec_form()
    assert argv[0] == "python"
    env = {**os.environ, "TRACE_WORKER_HTTP_PORT": str(port)}
    done = subprocess.run([sys.executable, *argv[1:]], check=False, env=env, capture_output=True, timeout=120)
    return done.returncode


def test_healthcheck_probes_livez(
    stages: list[Stage], health_server: http.server.ThreadingHTTPServer
) -> None:
    check = stages[-1].all("HEALTHCHECK")
    assert len(check) == 1
    assert {"interval", "timeout", "retries"} <= set(check[0].flags())
    port = health_server.server_address[1]
    assert _run_healthcheck(stages, port) == 0
    _Health.status = 503
    try:
        assert _run_healthcheck(stages, port) != 0
    finally:
        _Health.status = 200


def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        # Docker's rule: the last matching pattern wins; "!" re-includes.
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule[1:] if negate else rule
            pattern = pattern.rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") or pattern == "**":
                keep = negate
        return keep

    for copy in stages[0].all("COPY"):
        for source in copy.args.split()[:-1]:
            assert included(source), f"{source} is copied but excluded by .dockerignore"
            assert included(f"{source}/x.py") or not (ROOT / source).is_dir()
    for heavy in (".venv", ".git", "tests", "bench", "docs", "helm", ".mypy_cache"):
        assert not included(heavy), f"{heavy} would be sent to the build"
    assert not included("worker/__pycache__")


def test_build_stage_copies_exist(stages: list[Stage]) -> None:
    for copy in stages[0].all("COPY"):
        for source in copy.args.split()[:-1]:
            assert Path(ROOT / source).exists(), source
