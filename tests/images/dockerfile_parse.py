"""Just enough of a Dockerfile parser to check the images without a Docker engine.

No engine runs on this machine, so the images cannot be built here. What can be checked
is what the Dockerfiles say: their stages, ARG defaults, pip install lines and USER.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def base_image(self, stage: Stage) -> str:
        """A stage's base with stage names followed back to a real image."""
        named = {s.name: s for s in self.stages if s.name}
        while stage.base in named:
            stage = named[stage.base]
        return stage.base

    def expand(self, text: str) -> str:
        return _VAR.sub(lambda m: self.args.get(m[1] or m[2], m[0]), text)


def logical_lines(text: str) -> list[str]:
    """Instructions with `\\` continuations joined and comment lines dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args.setdefault(name.strip(), default.strip().strip('"'))
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=_VAR.sub(lambda m: args.get(m[1] or m[2], m[0]), words[0]),
                                name=name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(path=path, args=args, stages=stages)


@dataclass
class PipInstall:
    """One `pip install` command: its requirement tokens and its options."""
    requirements: list[str]
    options: dict[str, str]


_OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "--index-url", "-i",
                       "--extra-index-url", "-f", "--find-links"}


def pip_installs(dockerfile: Dockerfile) -> list[PipInstall]:
    found = []
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", dockerfile.expand(run)):
                words = shlex.split(command)
                is_pip = any(w.rsplit("/", 1)[-1] in ("pip", "pip3") for w in words[:3])
                if not is_pip or "install" not in words:
                    continue
                tokens = words[words.index("install") + 1:]
                reqs, options, i = [], {}, 0
                while i < len(tokens):
                    token = tokens[i]
                    if token in _OPTIONS_WITH_VALUE:
                        options[token] = tokens[i + 1]
                        i += 2
                        continue
                    if token.startswith("--") and "=" in token:
                        key, _, value = token.partition("=")
                        options[key] = value
                    elif token.startswith("-"):
                        options[token] = ""
                    else:
                        reqs.append(token)
                    i += 1
                found.append(PipInstall(requirements=reqs, options=options))
    return found
