"""The worker's own time bounds that deployment settings must cover, read from its source.

- :func:`worker_shutdown_after_drain_s`: how long ``Service.stop`` may still wait after the drain
  timeout (the bounded waits for cancelled jobs' clean-up and for shielded writes);
- :func:`worker_readyz_worst_case_s`: how long ``GET /readyz`` may take with every dependency hung
  (each probe bounded by ``PROBE_TIMEOUT_S``, run one after the other).

Read with ``ast`` rather than copied, so a change in the worker fails the deployment tests instead of
silently outgrowing the chart's and compose's margins.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from worker.service import app, health
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
    """Seconds ``GET /readyz`` may take when every dependency hangs."""
    readyz = _function(textwrap.dedent(inspect.getsource(health.HealthServer)), "_readyz")
    checks = [
        node.value
        for node in ast.walk(readyz)
        if isinstance(node, ast.AnnAssign)
        and ast.unparse(node.target) == "checks"
        and isinstance(node.value, ast.Dict)
    ]
    assert len(checks) == 1, "_readyz no longer builds a dict `checks`: update tests/deploy/worker_bounds.py"
    return len(checks[0].keys) * health.PROBE_TIMEOUT_S
