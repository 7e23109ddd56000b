"""Rewrite README.md's settings table from loom_ray.settings (run after changing a setting)."""

from pathlib import Path

from loom_ray.settings import markdown_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
start = text.index("\n", text.index("<!-- settings-table")) + 1
end = text.index("<!-- /settings-table -->")
readme.write_text(text[:start] + markdown_table() + "\n" + text[end:])
