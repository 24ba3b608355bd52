"""The worker's own time bounds that deployment settings must cover, read from its source.

- :func:`worker_shutdown_after_drain_s`: how long ``Service.stop`` may still wait after the drain
  timeout (the bounded waits for cancelled jobs' clean-up and for shielded writes);
- :func:`worker_readyz_worst_case_s`: how long ``GET /readyz`` may take with every dependency hung
  (the probes run at once, each bounded by ``PROBE_TIMEOUT_S``; a caller waits at most that plus a
  little for their answer).

Read with ``ast`` rather than copied, so a change in the worker fails the deployment tests instead of
silently outgrowing the chart's and compose's margins.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from worker.service import app, health, readiness
from worker.service.runtime import Runtime

__all__ = ["worker_readyz_worst_case_s", "worker_shutdown_after_drain_s"]


def _seconds(node: ast.expr) -> float:
    assert isinstance(node, ast.Constant) and isinstance(node.value, int | float), ast.unparse(node)
    return float(node.value)


def _function(module_source: str, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef:
    for node in ast.walk(ast.parse(module_source)):
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{name} not found")


def worker_shutdown_after_drain_s() -> float:
    """Seconds ``Service.stop`` may wait after the drain deadline (sum of its fixed wait bounds)."""
    stop = _function(inspect.getsource(app), "stop")
    total = 0.0
    found = 0
    settle_default = inspect.signature(Runtime.settle).parameters["within"].default
    for node in ast.walk(stop):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        timeout = next((k.value for k in node.keywords if k.arg == "timeout"), None)
        if name == "asyncio.wait" and isinstance(timeout, ast.Constant):
            total += _seconds(timeout)
            found += 1
        elif name.endswith(".settle"):
            within = (
                node.args[0]
                if node.args
                else next((k.value for k in node.keywords if k.arg == "within"), None)
            )
            total += float(settle_default) if within is None else _seconds(within)
            found += 1
    assert found >= 2, "Service.stop no longer has the waits this reads: update tests/deploy/worker_bounds.py"
    return total


def worker_readyz_worst_case_s() -> float:
    """Seconds ``GET /readyz`` may take when every dependency hangs: the bound of a caller's wait in
    ``Readiness.failures`` (``asyncio.timeout(self._timeout + <slack>)``), with the probe timeout the
    health server gives ``Readiness``."""
    init = _function(textwrap.dedent(inspect.getsource(health.HealthServer)), "__init__")
    built = [n for n in ast.walk(init) if isinstance(n, ast.Call) and ast.unparse(n.func) == "Readiness"]
    assert len(built) == 1, "HealthServer builds no single Readiness: update worker_bounds.py"
    given = next((k.value for k in built[0].keywords if k.arg == "timeout_s"), None)
    default = inspect.signature(readiness.Readiness).parameters["timeout_s"].default
    timeout = float(default) if given is None else _seconds(given)
    failures = _function(textwrap.dedent(inspect.getsource(readiness.Readiness)), "failures")
    waits = [
        n.args[0]
        for n in ast.walk(failures)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "asyncio.timeout" and len(n.args) == 1
    ]
    assert len(waits) == 1, "Readiness.failures has no single bounded wait: update worker_bounds.py"
    wait = waits[0]
    assert isinstance(wait, ast.BinOp) and isinstance(wait.op, ast.Add), ast.unparse(wait)
    assert ast.unparse(wait.left) == "self._timeout", ast.unparse(wait)
    return timeout + _seconds(wait.right)
