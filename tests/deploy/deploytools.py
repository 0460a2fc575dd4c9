"""Helpers for the deployment tests: a Dockerfile parser, compose interpolation, entry points.

No Docker engine runs where these tests run, so the files are checked by reading them: a small
Dockerfile line parser, compose interpolation of ``${VAR:-default}`` with the defaults, and the
entry points run for real with ``--help``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.settings import ENV_PREFIX, Settings, get_args_parser, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVER_DOCKERFILE = ROOT / "docker" / "Dockerfile.server"
EXPORT_DOCKERFILE = ROOT / "docker" / "Dockerfile.export"

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolation_names(value: Any) -> set[str]:
    """Names of every ``${VAR...}`` reference anywhere inside a parsed YAML value."""
    if isinstance(value, str):
        return {m["name"] for m in _INTERPOLATION.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(interpolation_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(interpolation_names(v) for v in value)) if value else set()
    return set()


def resolve_defaults(value: Any) -> Any:
    """Interpolate like ``docker compose`` with an empty environment: every variable takes its
    ``:-`` default. A reference without a default is an error, because then the file would
    not work without a .env file."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match["op"] is None:
                raise AssertionError(f"{match[0]!r} has no default; expected ${{{match['name']}:-VALUE}}")
            return match["default"]

        return _INTERPOLATION.sub(substitute, value)
    if isinstance(value, dict):
        return {k: resolve_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_defaults(v) for v in value]
    return value


@dataclass
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return [str(v) for v in value] if isinstance(value, list) else None


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def environment(self) -> dict[str, str]:
        """The variables this stage's ENV instructions set, unexpanded (``$PATH`` stays as written)."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            words = shlex.split(instruction.args)
            if words and "=" not in words[0]:  # the legacy form: ENV NAME value with spaces
                env[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                env[key] = value
        return env


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = [s.name for s in self.stages]
        raise AssertionError(f"{self.path.name} has no stage {name!r}; it has {names}")

    def args_declared(self) -> set[str]:
        names = set(self.global_args)
        for stage in self.stages:
            for arg in stage.all("ARG"):
                names.add(arg.args.split("=", 1)[0].strip())
        return names


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse a Dockerfile into global ARGs and stages: enough for static checks."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        # Comment lines are dropped even inside a continued instruction, as Docker does.
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        flags = {}
        rest = args.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            key, _, value = flag[2:].partition("=")
            flags[key] = value
            rest = rest.strip()
        instructions.append(Instruction(keyword.upper(), rest, start, flags))
    assert not pending, f"{path} ends inside a continued instruction"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, words[0], []))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path}:{instruction.line}: only ARG may precede FROM"
            key, _, value = instruction.args.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path, global_args, stages)


@functools.cache
def module_help(module: str) -> str:
    """``python -m MODULE --help`` output; fails the test if the entry point does not run."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"python -m {module} --help exited {result.returncode}:\n{result.stderr}"
    return result.stdout


#: The entry points that images and compose may run; each has its own tests elsewhere.
ENTRY_POINTS = {"server", "export", "clients.health"}


def check_python_command(argv: list[str], where: str) -> None:
    """Assert ``argv`` is ``python -m <entry point> [flags]`` and every flag is in its --help."""
    assert argv[:2] == ["python", "-m"] and len(argv) >= 3, (
        f"{where}: command {shlex.join(argv)!r}; expected 'python -m <module> ...'"
    )
    module = argv[2]
    assert module in ENTRY_POINTS, f"{where}: module {module!r}; expected one of {sorted(ENTRY_POINTS)}"
    text = module_help(module)
    for arg in argv[3:]:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", text), (
                f"{where}: flag {flag!r} is not in 'python -m {module} --help'"
            )


@functools.cache
def setting_names() -> frozenset[str]:
    """Every CNNSERVE_* variable python -m server reads (one per flag)."""
    parser = get_args_parser()
    return frozenset(
        ENV_PREFIX + a.dest.upper() for a in parser._actions if a.option_strings and a.dest != "help"
    )


def parse_server_settings(command: list[str], environment: dict[str, str]) -> Settings:
    """What python -m server builds from this command and environment, through its own parser."""
    assert command[:3] == ["python", "-m", "server"], command
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return settings_from_args(command[3:], environ=environment)
    except SystemExit:
        raise AssertionError(f"python -m server refuses it: {stderr.getvalue().strip()}") from None
