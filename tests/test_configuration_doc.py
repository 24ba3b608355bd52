"""docs/CONFIGURATION.md documents every setting, with its real default, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from worker.settings import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md"
_CELL = re.compile(r"(?<!\\)\|")  # cell borders; "\|" inside a cell is a literal pipe


def _rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `TRACE_WORKER_"):
            continue
        cells = [c.strip() for c in _CELL.split(line)[1:-1]]
        assert len(cells) == 4, line
        name = cells[0].strip("`").removeprefix("TRACE_WORKER_").lower()
        assert name not in rows, f"{name} documented twice"
        rows[name] = (cells[2], cells[3])
    return rows


def test_every_setting_is_documented_once() -> None:
    rows = _rows()
    assert set(rows) == set(Settings.model_fields)


def test_documented_defaults_and_meanings() -> None:
    rows = _rows()
    for name, field in Settings.model_fields.items():
        default, meaning = rows[name]
        value = field.default
        expected = "—" if value is None or isinstance(value, SecretStr) else f"`{value}`"
        assert default == expected, f"{name}: doc says {default}, model says {expected}"
        assert meaning.strip(), f"{name} has no description"
