"""`trace-worker` start-up: a command imports only what it needs, so `--help` loads no heavy package
(checked by module name in a fresh interpreter, not by a clock)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "pyarrow",
    "faststream",
    "redis",
    "numpy",
    "datafusion",
    "pydantic",
    "adbc_driver_manager",
    "obstore",
)

_PROBE = """
import sys
from worker.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = {heavy!r}
print("LOADED=" + ",".join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def loaded_by(*argv: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has imported after ``trace-worker ARGV``."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED="))
    return [m for m in line.removeprefix("LOADED=").split(",") if m]


def test_top_level_help_imports_no_heavy_package() -> None:
    assert loaded_by("--help") == []
    assert loaded_by("--version") == []


def test_a_command_loads_only_what_it_needs() -> None:
    # inspect decodes protobuf (numpy); it needs none of the service's, source's or client's packages.
    assert set(loaded_by("inspect", "--help")) <= {"numpy"}
    assert "faststream" not in loaded_by("status", "--help")


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action.help for action in sub._choices_actions}


def test_the_short_listing_says_what_each_command_says_of_itself() -> None:
    assert _summaries(build_parser()) == COMMANDS == _summaries(build_parser(full=[]))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: trace-worker {name}")


#: A real Ctrl-C (SIGINT to itself) while the command's module is being imported.
_CTRL_C_WHILE_IMPORTING = """
import importlib, signal, sys
import worker.cli

# Ctrl-C as a terminal's user has it, even when the suite runs with SIGINT ignored (`&`, nohup).
signal.signal(signal.SIGINT, signal.default_int_handler)

def import_module(name):
    signal.raise_signal(signal.SIGINT)
    return importlib.import_module(name)

worker.cli.importlib = type("Importlib", (), {"import_module": staticmethod(import_module)})
sys.exit(worker.cli.main(["demo"]))
"""


def test_ctrl_c_during_start_up_exits_130_without_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "trace-worker: interrupted"
