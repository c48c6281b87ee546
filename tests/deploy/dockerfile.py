"""A Dockerfile read the way the tests need it: stages of instructions, and a builder stage run here.

Docker's own parser is not available here (no daemon); this one knows what our two Dockerfiles use:
line continuations, comments (parser directives and hadolint pragmas included), ``FROM x AS y``,
``ENV`` with ``$VAR`` expansion, ``WORKDIR``, ``COPY`` within the build context, ``RUN`` in shell form.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The variables this stage's ENV instructions set, expanded against each other."""
        return apply_env(self, {}, {})


def parse(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (continuations joined, comments dropped)."""
    stages: list[Stage] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue  # Docker skips comment lines inside a continuation too
        if not pending:
            start = number
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        pending.append(text)
        keyword, _, args = " ".join(pending).partition(" ")
        pending = []
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip(), start))
    return stages


def healthcheck_command(stage: Stage) -> list[str]:
    """The exec-form command of the stage's HEALTHCHECK."""
    (check,) = stage.all("HEALTHCHECK")
    _, _, command = check.args.partition("CMD ")
    return list(json.loads(command))


def expand(value: str, env: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def apply_env(stage: Stage, env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """``env`` updated by the stage's ENV instructions; a name in ``overrides`` takes that value instead."""
    env = dict(env)
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            name, _, value = word.partition("=")
            env[name] = overrides.get(name, expand(value, env))
    return env


def run_stage(
    stage: Stage, *, context: Path, workdir: Path, env: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """Run a stage's ENV, WORKDIR, COPY and RUN instructions on this machine, in order.

    Absolute WORKDIRs are moved under ``workdir``; ``overrides`` replace ENV values (the venv's path).
    Returns the environment the stage ended with.
    """
    cwd = workdir  # Docker's is /, the root of the image's file system
    cwd.mkdir(parents=True, exist_ok=True)
    for instruction in stage.instructions:
        if instruction.keyword == "ENV":
            env = apply_env(Stage(stage.base, None, [instruction]), env, overrides)
        elif instruction.keyword == "WORKDIR":
            cwd = workdir / instruction.args.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, target = shlex.split(instruction.args)
            assert not any(s.startswith("--") for s in sources), f"COPY flags not supported: {instruction}"
            for source in sources:
                _copy(context / source, cwd / target, into=target.endswith("/") or len(sources) > 1)
        elif instruction.keyword == "RUN":
            result = subprocess.run(
                ["sh", "-c", instruction.args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            assert result.returncode == 0, f"line {instruction.line}: {instruction.args}\n{output}"

    return env


def _copy(source: Path, target: Path, *, into: bool) -> None:
    destination = target / source.name if into else target
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(source, destination)


def host_environment() -> dict[str, str]:
    """This process's environment, without what would leak the test venv into a build."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
