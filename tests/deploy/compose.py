"""Loading docker-compose files the way Compose does: interpolate, then parse with a strict Compose parser.

No Compose engine or plugin is available on the development machine (``docker compose config`` needs
the plugin), so the files are parsed by ``compose-spec`` (PyPI; bindings of the Rust ``compose_spec``
crate), which implements the Compose Specification and rejects unknown keys and bad values.
Interpolation (``${VAR:-default}`` and friends) is done here first, as Compose does before parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compose_spec import PyOptions

__all__ = ["interpolate", "load_compose", "read_env_file"]

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``; ``$$`` is ``$``.

    Raises:
        KeyError: a variable without a default is unset (Compose would warn and use "").
        ValueError: a ``${VAR:?message}`` variable is unset or empty.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return "$"
        op, arg = match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":-", ":?") and value == "":
            value = None
        if value is not None:
            return value
        if op in (":-", "-"):
            return arg or ""
        if op in (":?", "?"):
            raise ValueError(f"{name}: {arg}")
        raise KeyError(f"${{{name}}} has no default and is not set")

    return _VAR.sub(replace, text)


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse a Compose file (YAML merge keys applied) and return it as a plain dictionary.

    Raises:
        ValueError: the file breaks the Compose Specification (the message names the key).
    """
    text = interpolate(path.read_text(), env or {})
    compose = PyOptions(apply_merge=True).from_yaml(text)
    compose.validate()
    loaded: dict[str, Any] = compose.to_dict()
    return loaded


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a Compose env file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=value: {line!r}"
        out[name.strip()] = value.strip()
    return out
