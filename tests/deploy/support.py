"""Helpers for the deployment tests: repository paths, the Settings' variable names, Helm rendering.

The chart is rendered by Helm's own Go library (PyPI ``helm-python-sdk``, which ships ``libhelm_c``),
offline: the same template engine and schema validation as ``helm template`` / ``helm install``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

from worker.settings import Settings

__all__ = [
    "CHART",
    "ROOT",
    "Manifests",
    "load_chart",
    "production_values",
    "render",
    "setting_env_names",
]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "trace-worker"
RELEASE = "tw"
NAMESPACE = "observability"


def setting_env_names() -> set[str]:
    """Every environment variable the worker's Settings model reads (``TRACE_WORKER_<FIELD>``)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def production_values() -> dict[str, Any]:
    """The chart's production-like example values (helm/trace-worker/ci/production-values.yaml)."""
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
    return loaded


class Manifests:
    """The Kubernetes objects of one rendered release, looked up by kind (and name)."""

    def __init__(self, rendered: dict[str, str]) -> None:
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    self.objects.append(doc)

    def kinds(self) -> list[str]:
        """Kinds of every object, sorted."""
        return sorted(str(o["kind"]) for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every object of one kind."""
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        """The single object of one kind (fails when there are none or several)."""
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}: {self.kinds()}"
        return found[0]

    def container(self) -> dict[str, Any]:
        """The worker container of the Deployment."""
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["worker"]
        found: dict[str, Any] = containers[0]
        return found

    def pod_spec(self) -> dict[str, Any]:
        """The Deployment's pod spec."""
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def env(self) -> dict[str, dict[str, Any]]:
        """The worker container's explicit env entries by name."""
        return {e["name"]: e for e in self.container().get("env") or []}


@contextmanager
def load_chart() -> Iterator[helm.Chart]:
    """The chart, loaded by Helm's library (closed afterwards)."""
    chart = helm.Chart.load(CHART)
    try:
        yield chart
    finally:
        chart.close()


def render(values: dict[str, Any] | None = None, *, kube_version: str | None = None) -> Manifests:
    """Render the chart as an install of release ``tw`` with ``values`` over the defaults.

    ``kube_version`` (e.g. ``"v1.25.0"``) is the cluster version the templates see in
    ``.Capabilities.KubeVersion``; None keeps Helm's default (a current release).

    Raises:
        helm_python.HelmValuesError: the values fail values.schema.json.
        helm_python.HelmRenderError: a template failed (including the chart's own ``fail`` checks).
    """
    with load_chart() as chart:
        if kube_version is None:
            return Manifests(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))
        # Chart.render (helm-python-sdk 0.2.2) does not pass the library's kube_version render option
        # through; call the library's helm_render the same way Chart.render does, with that option added.
        options = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True, "kube_version": kube_version}
        rendered = _native.call_string(
            "helm_render", chart._raw(), None if values is None else json.dumps(values), json.dumps(options)
        )
        manifests: dict[str, str] = json.loads(rendered)
        return Manifests(manifests)
