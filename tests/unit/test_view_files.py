"""view_files(): each view of sql/views/ once, after the views it reads; the versioned migrations hold no view.
tests/integration/test_migrate.py applies them to PostgreSQL."""

from __future__ import annotations

import graphlib
import re
from pathlib import Path

import pytest

from loom_ray.migrate import SQL_DIR, migration_files, view_files


def _write(directory: Path, **views: str) -> Path:
    for name, text in views.items():
        (directory / f"{name}.sql").write_text(text)
    return directory


def _code(text: str) -> str:
    """The SQL without its ``--`` comments (no view here holds ``--`` inside a string)."""
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def test_a_view_comes_after_the_views_it_reads(tmp_path: Path) -> None:
    _write(
        tmp_path,
        a_top="-- Reads views: m_middle, z_base\nCREATE OR REPLACE VIEW a_top AS SELECT 1;",
        m_middle="-- Reads views: z_base\nCREATE OR REPLACE VIEW m_middle AS SELECT 1;",
        z_base="CREATE OR REPLACE VIEW z_base AS SELECT 1;",
    )
    views = view_files(tmp_path)
    assert [v.name for v in views] == ["z_base", "m_middle", "a_top"]
    assert views[2].reads == ("m_middle", "z_base")


def test_a_view_reading_an_undefined_view_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, a="-- Reads views: nowhere\nCREATE OR REPLACE VIEW a AS SELECT 1;")
    with pytest.raises(ValueError, match=r"a\.sql reads \['nowhere'\]"):
        view_files(tmp_path)


def test_views_reading_each_other_in_a_circle_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, a="-- Reads views: b\n", b="-- Reads views: a\n")
    with pytest.raises(graphlib.CycleError):
        view_files(tmp_path)


def test_the_checksum_follows_the_text(tmp_path: Path) -> None:
    _write(tmp_path, a="CREATE OR REPLACE VIEW a AS SELECT 1;")
    first = view_files(tmp_path)[0].sha256
    _write(tmp_path, a="CREATE OR REPLACE VIEW a AS SELECT 2;")
    assert view_files(tmp_path)[0].sha256 != first


def test_each_view_file_defines_its_own_view_and_declares_every_view_it_reads() -> None:
    views = view_files()
    names = {v.name for v in views}
    assert names == {
        "v_consumer_performance_monitor",
        "v_consumer_activity_monitoring",
        "v_consumer_lag_health",
        "v_consumer_alerts",
        "v_route_counts",
    }
    for view in views:
        code = _code(view.text)
        assert re.findall(r"CREATE OR REPLACE VIEW (\w+)", code) == [view.name]
        mentioned = {name for name in names - {view.name} if re.search(rf"\b{name}\b", code)}
        assert mentioned == set(view.reads), view.name


def test_versioned_migrations_hold_tables_only() -> None:
    for path in migration_files(SQL_DIR):
        assert not re.search(r"CREATE\s+(OR\s+REPLACE\s+)?VIEW", path.read_text(), re.IGNORECASE), path.name
