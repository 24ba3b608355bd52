"""A small Dockerfile reader for static checks (no Docker engine on the development machine).

Handles what our Dockerfile uses: comments, backslash continuations, ARG defaults in FROM, JSON
(exec) and shell forms. Not a general parser: the checks that use it fail loudly on anything else.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Instruction", "Stage", "parse_dockerfile"]


@dataclass(frozen=True)
class Instruction:
    """One instruction: upper-case keyword and its raw argument text."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON-array argument (CMD/ENTRYPOINT/HEALTHCHECK CMD), or shell words otherwise."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :].strip()
        if text.startswith("["):
            parsed: list[str] = json.loads(text)
            return parsed
        return shlex.split(text)

    def flags(self) -> dict[str, str]:
        """Leading ``--name=value`` flags (COPY --from=..., HEALTHCHECK --interval=...)."""
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.args.split(" CMD ")[0]))


@dataclass
class Stage:
    """A build stage: its base, name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Instructions with that keyword."""
        return [i for i in self.instructions if i.keyword == keyword]

    def text(self) -> str:
        """Every instruction of the stage, one per line."""
        return "\n".join(f"{i.keyword} {i.args}" for i in self.instructions)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages
