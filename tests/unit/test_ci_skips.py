"""Under ``CI=true`` a skipped test fails the run (tests/conftest.py); elsewhere it stays a skip.

Each case runs pytest in a subprocess on a small test file, with the suite's conftest loaded as a plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.services import ROOT

_SKIPS = """
import pytest


@pytest.fixture
def tool():
    pytest.skip("tool missing")


def test_skipped_in_its_body():
    pytest.skip("not here")


@pytest.mark.skipif(True, reason="by a mark")
def test_skipped_by_a_mark():
    pass


def test_skipped_by_a_fixture(tool):
    pass


@pytest.mark.xfail(reason="a known failure, not a skip")
def test_expected_failure():
    assert False


def test_that_runs():
    pass
"""
_SKIPPED_MODULE = """
import pytest

pytest.skip("the whole module", allow_module_level=True)
"""


def _pytest(directory: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on ``directory`` with the suite's conftest, ``CI`` set to ``ci`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", str(directory)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_every_kind_of_skip_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_skips.py").write_text(_SKIPS)
    done = _pytest(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    for reason in ("not here", "by a mark", "tool missing"):
        assert f"\nskipped under CI=true, where every test must run: {reason}\n" in done.stdout, done.stdout
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in done.stdout, done.stdout


def test_a_skipped_module_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_skipped_module.py").write_text(_SKIPPED_MODULE)
    done = _pytest(tmp_path, "1")
    assert done.returncode != 0, done.stdout
    assert "\nskipped under CI=1, where every test must run: the whole module\n" in done.stdout, done.stdout


def test_skips_stay_skips_outside_ci(tmp_path: Path) -> None:
    (tmp_path / "test_skips.py").write_text(_SKIPS)
    (tmp_path / "test_skipped_module.py").write_text(_SKIPPED_MODULE)
    done = _pytest(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in done.stdout, done.stdout
