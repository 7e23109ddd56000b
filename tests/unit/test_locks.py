"""The image's runtime lock pins the same versions as the development lock the tests run on."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(name: str) -> dict[str, str]:
    # A pin is `name==version`, followed in the runtime lock by ` \` and its `--hash` lines.
    lines = (ROOT / name).read_text().splitlines()
    return dict(line.split()[0].split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_runtime_lock_is_a_subset_of_the_dev_lock() -> None:
    runtime, dev = pins("requirements-runtime.lock"), pins("requirements.lock")
    assert {"ray", "confluent-kafka", "asyncpg", "pydantic-settings"} <= runtime.keys()
    assert {name: dev.get(name) for name in runtime} == runtime
