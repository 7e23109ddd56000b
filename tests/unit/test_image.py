"""The image is exactly the lock: kuberay/Dockerfile, requirements-runtime.lock and .dockerignore, read as files
(no Docker engine here, so the image is never built in CI; what a build would do is checked line by line)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

import loom_ray
from loom_ray.migrate import SQL_DIR

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "kuberay" / "Dockerfile"
LOCK = ROOT / "requirements-runtime.lock"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(first.upper(), rest.strip()) for first, _, rest in (line.partition(" ") for line in logical)]


def requirements(lock: str) -> dict[str, list[str]]:
    """Each requirement of a pip requirements file (continuation lines joined) -> its ``--hash`` values."""
    found: dict[str, list[str]] = {}
    joined = re.sub(r"\\\n", " ", lock)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]+\])?==[^=\s]+", spec), f"not pinned: {line!r}"
        found[spec] = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        assert len(found[spec]) == len(options), f"{spec}: options other than --hash: {options}"
    return found


def _runs() -> list[str]:
    return [args for instruction, args in instructions(DOCKERFILE.read_text()) if instruction == "RUN"]


def _pip_commands() -> list[list[str]]:
    """Every ``pip`` invocation of every RUN (``&&``-separated commands), as argument lists."""
    commands = []
    for run in _runs():
        lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, "&&"]:
            if word in ("&&", ";", "||"):
                if "pip" in command:
                    commands.append(command[command.index("pip") :])
                command = []
            else:
                command.append(word)
    return commands


def test_every_runtime_requirement_is_pinned_with_sha256_hashes() -> None:
    found = requirements(LOCK.read_text())
    assert len(found) > 50  # ray[default]'s tree, not a stub
    assert {"ray==2.60.0"} <= found.keys()
    for spec, hashes in found.items():
        assert hashes, f"{spec} has no --hash: regenerate with .venv/bin/uv pip compile ... --generate-hashes"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), spec


def test_the_hash_check_reads_a_bare_pin_as_an_error() -> None:
    with pytest.raises(AssertionError, match="not pinned"):
        requirements("ray>=2.60\n")
    assert requirements("ray==2.60.0\n") == {"ray==2.60.0": []}  # pinned, no hash: the test above fails it


def test_the_lock_is_installed_alone_with_require_hashes_then_pip_check() -> None:
    pips = _pip_commands()
    installs = [c for c in pips if "install" in c]
    [install] = installs  # one install, of the lock: nothing else is fetched
    assert "--require-hashes" in install
    assert "--no-deps" in install
    assert "--only-binary=:all:" in install  # no sdist build, so no unpinned build tool
    assert install[install.index("-r") + 1] == LOCK.name
    assert not {"-e", "--editable", "--upgrade", "-U"} & set(install)
    checks = [c for c in pips if "check" in c]
    assert checks and pips.index(checks[0]) > pips.index(install)
    # Both run against the virtual environment that PATH puts first (created --without-pip: only the lock).
    venv = "$VIRTUAL_ENV/bin/python"
    assert install[install.index("--python") + 1] == venv == checks[0][checks[0].index("--python") + 1]
    assert any("venv --without-pip" in run for run in _runs())
    env = dict(args.split("=", 1) for instruction, args in instructions(DOCKERFILE.read_text()) if instruction == "ENV")
    assert env["PATH"].startswith(env["VIRTUAL_ENV"] + "/bin:")


def test_loom_ray_is_on_pythonpath_with_its_migrations_not_built_or_installed() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    workdir = next(args for instruction, args in parsed if instruction == "WORKDIR")
    env = dict(args.split("=", 1) for instruction, args in parsed if instruction == "ENV")
    assert env["PYTHONPATH"] == workdir
    copied = {args.split()[-2]: args.split()[-1] for instruction, args in parsed if instruction == "COPY"}
    assert {copied[name] for name in ("loom_ray", "actors", "sql")} == {"./loom_ray", "./actors", "./sql"}
    # loom_ray/migrate.py reads the migrations from <loom_ray>/../sql: the image copies sql/ next to loom_ray/.
    assert SQL_DIR == Path(loom_ray.__file__).resolve().parent.parent / "sql"
    assert not [run for run in _runs() if re.search(r"\b(setup\.py|build|wheel)\b", run)]


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for instruction, args in instructions(DOCKERFILE.read_text()) if instruction == "USER"]
    assert users, "no USER: the image would run as the base image's user, unchecked"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or gid.isdigit()
    assert int(uid) == 1000  # raycluster.yaml and supervisor.yaml: runAsUser 1000


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, enough for these patterns: a pattern matches the path or one of its
    parents; ``**/x`` matches ``x`` at any depth."""
    parts = path.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            return True
    return False


def _dockerignore() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("path", [".venv", ".cache", ".stack", ".stack-kafka", ".git", "bench-results/raw", "tests"])
def test_dockerignore_keeps_local_state_and_tests_out_of_the_context(path: str) -> None:
    assert _ignored(path, _dockerignore())
    assert _ignored(f"{path}/some/file", _dockerignore())


def test_dockerignore_keeps_what_the_image_copies() -> None:
    patterns = _dockerignore()
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction == "COPY":
            for source in [w for w in args.split()[:-1] if not w.startswith("--")]:
                assert (ROOT / source).exists(), source
                assert not _ignored(source, patterns), f"{source} is in .dockerignore: the build would miss it"
    assert _ignored("loom_ray/__pycache__/main.cpython-311.pyc", patterns)
    assert not _ignored("bench-results/latest.json", patterns)
