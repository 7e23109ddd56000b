"""The README's variable table is the one the code generates: docs match the settings."""

from pathlib import Path

from loom_ray.settings import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting_as_generated() -> None:
    text = README.read_text()
    start = text.index("<!-- settings-table")
    end = text.index("<!-- /settings-table -->")
    table = text[text.index("\n", start) + 1 : end].strip()
    assert table == markdown_table(), "regenerate: .venv/bin/python scripts/readme-settings.py"
