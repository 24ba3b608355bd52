"""Import direction between the packages (docs/ARCHITECTURE.md), checked on the source with ast.

- contracts imports nothing from worker, and no third-party package but pydantic (redis in the client
  library's modules);
- engine imports no I/O library (redis, faststream, adbc, flight, obstore) and no other worker layer
  but errors;
- source, engine and sinks never import each other;
- faststream only in worker/service; adbc only in worker/source; devserver imports nothing from worker
  (so it cannot hide a source bug by sharing code); nothing imports worker.cli;
- the gateway is a requester like any other: it talks to Redis only through the client library
  (contracts.client), never through the job system, the engine, the sinks or the pipeline; fastapi
  and uvicorn only in worker/gateway (and its command).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    base = ROOT / package.replace(".", "/")
    if base.is_dir():
        return sorted(p for p in base.rglob("*.py") if not p.name.endswith("_pb2.py"))
    return [base.with_suffix(".py")] if base.with_suffix(".py").exists() else []


def _violations(package: str, forbidden: tuple[str, ...], allow: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in _files(package):
        for name in _imports(path):
            hit = any(name == f or name.startswith(f + ".") for f in forbidden)
            if hit and not any(name == a or name.startswith(a + ".") for a in allow):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


IO_LIBS = ("redis", "faststream", "adbc_driver_flightsql", "adbc_driver_manager", "pyarrow.flight", "obstore")


#: The client library's modules: the only part of contracts that may talk to Redis.
CLIENT_MODULES = frozenset({"client.py", "_reader.py", "_runs.py", "redis_cancel.py"})


def test_contracts_stand_alone() -> None:
    assert (
        _violations("contracts", ("worker", "pyarrow", "numpy", "faststream", "adbc_driver_flightsql")) == []
    )
    for path in _files("contracts"):
        if path.name not in CLIENT_MODULES:
            assert not {n for n in _imports(path) if n == "redis" or n.startswith("redis.")}, path


def test_engine_is_pure() -> None:
    layers = ("worker.source", "worker.sinks", "worker.service", "worker.pipeline", "worker.settings")
    assert _violations("worker.engine", IO_LIBS + layers) == []


def test_source_engine_sinks_are_independent() -> None:
    assert _violations("worker.source", ("worker.engine", "worker.sinks", "worker.service")) == []
    assert _violations("worker.sinks", ("worker.engine", "worker.source", "worker.service")) == []


def test_third_party_libraries_stay_in_their_layer() -> None:
    for package in ("worker.engine", "worker.source", "worker.sinks", "worker.pipeline", "contracts"):
        assert _violations(package, ("faststream",)) == []
    for package in ("worker.engine", "worker.sinks", "worker.service", "contracts"):
        assert _violations(package, ("adbc_driver_flightsql", "adbc_driver_manager")) == []


def test_devserver_imports_nothing_from_worker() -> None:
    assert _violations("worker.devserver", ("worker", "contracts"), allow=("worker.devserver",)) == []


def test_nothing_imports_the_cli() -> None:
    for path in ROOT.joinpath("worker").rglob("*.py"):
        if path.parent.name == "commands" or path.name in ("cli.py", "__main__.py"):
            continue
        assert "worker.cli" not in _imports(path), path


def test_gateway_is_a_requester() -> None:
    layers = ("worker.service", "worker.engine", "worker.sinks", "worker.pipeline", "worker.devserver")
    assert _violations("worker.gateway", (*layers, "faststream", "worker.cli")) == []
    redis_direct = [v for v in _violations("worker.gateway", ("redis",)) if "redis.exceptions" not in v]
    assert redis_direct == []  # commands go through contracts.client (exceptions may be caught)
    for package in (
        "worker.engine",
        "worker.source",
        "worker.sinks",
        "worker.service",
        "worker.pipeline",
        "contracts",
    ):
        assert _violations(package, ("fastapi", "starlette", "uvicorn", "worker.gateway")) == []
