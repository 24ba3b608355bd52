"""docs/DEPLOYMENT.md and the chart README name only settings and values that exist."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.support import CHART, ROOT, setting_env_names

DOCS = [ROOT / "docs" / "DEPLOYMENT.md", CHART / "README.md"]
_VALUE_ROOTS = (
    "config",
    "secret",
    "autoscaling",
    "flightsql",
    "redisTls",
    "metrics",
    "resources",
    "podDisruptionBudget",
)


def _has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_settings_named_in_the_docs_exist(doc: Any) -> None:
    named = set(re.findall(r"\bTRACE_WORKER_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
    assert named, "no setting named at all"
    assert sorted(named - setting_env_names()) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_chart_values_named_in_the_docs_exist(doc: Any) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pattern = r"`((?:%s)(?:\.[A-Za-z0-9]+)+)(?:=[^`]*)?`" % "|".join(_VALUE_ROOTS)
    named = set(re.findall(pattern, doc.read_text()))
    named |= set(re.findall(r"--set ((?:%s)(?:\.[A-Za-z0-9]+)+)=" % "|".join(_VALUE_ROOTS), doc.read_text()))
    assert named
    assert sorted(p for p in named if not _has_path(values, p)) == []
