"""The command line: --help documents every LOOM_* variable; bad settings exit 2 before anything connects."""

from __future__ import annotations

import typing
from typing import Any, NoReturn

import pytest
from pydantic import SecretStr

from loom_ray import main as cli
from loom_ray.settings import Settings, env_name


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


SECRET_DEFAULTS = [
    info.default.get_secret_value()
    for info in Settings.model_fields.values()
    if _is_secret(info.annotation) and isinstance(info.default, SecretStr)
]


@pytest.fixture
def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("field", Settings.model_fields)
def test_help_lists_every_variable(field: str, help_text: str) -> None:
    [line] = [line for line in help_text.splitlines() if line.split()[:1] == [env_name(field)]]
    description = Settings.model_fields[field].description
    assert description and description in line


def test_help_shows_defaults_but_never_a_secret(help_text: str) -> None:
    assert SECRET_DEFAULTS, "the DSN has a default, so this test checks something"
    for secret in SECRET_DEFAULTS:
        assert secret not in help_text
    assert "[default: 200]" in help_text  # LOOM_KAFKA_BATCH_SIZE
    assert "[default: events]" in help_text  # LOOM_KAFKA_TOPICS, a tuple shown comma-separated
    for field, info in Settings.model_fields.items():
        if _is_secret(info.annotation):
            [line] = [line for line in help_text.splitlines() if line.split()[:1] == [env_name(field)]]
            assert line.endswith("[default: (secret)]")


class _Connected(Exception):  # noqa: N818 - not caught by main(), so reaching a guard fails the test
    pass


def _guard(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise _Connected(what)

    return refuse


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything past the settings (PostgreSQL, Kafka, Ray) raises _Connected."""
    monkeypatch.setattr("asyncpg.connect", _guard("asyncpg.connect"))
    monkeypatch.setattr(cli, "KafkaMetadata", _guard("KafkaMetadata"))
    monkeypatch.setattr(cli, "connect_ray", _guard("connect_ray"))
    monkeypatch.setattr(cli, "run", _guard("run"))


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    ("variable", "value"), [("LOOM_KAFKA_BATCH_SIZE", "0"), ("LOOM_DB_DSN", "mysql://u:hunter2@h/db")]
)
def test_bad_settings_exit_2_before_connecting(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main([]) == cli.EXIT_CONFIG == 2
    captured = capsys.readouterr()
    assert variable in captured.err
    assert captured.err.startswith("loom-ray: invalid configuration:")
    assert "hunter2" not in captured.err + captured.out


@pytest.mark.usefixtures("no_connections")
def test_valid_settings_go_on_to_run() -> None:
    # The control for the test above: with good settings main() does get past them (and hits the guard).
    with pytest.raises(_Connected, match="run"):
        cli.main([])


def test_arguments_parse() -> None:
    args = cli.parse_args(["--exit-when-drained", "--address", "ray://h:10001", "--actors", "4"])
    assert (args.exit_when_drained, args.address, args.actors) == (True, "ray://h:10001", 4)
    defaults = cli.parse_args([])
    assert (defaults.exit_when_drained, defaults.address, defaults.actors) == (False, None, None)
    assert (defaults.progress_interval, defaults.log_level) == (5.0, "INFO")


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        # KubeRay: the head offers loom_coordinator (kuberay/raycluster.yaml), so the coordinator asks for it.
        ({"CPU": 30.0, "memory": 2e10, "loom_coordinator": 1.0}, {"resources": {"loom_coordinator": 0.001}}),
        # A local Ray or `ray start --head` without it: nothing extra, or the coordinator would never be placed.
        ({"CPU": 4.0, "memory": 8e9, "object_store_memory": 2e8}, {}),
    ],
    ids=["head-resource", "local"],
)
def test_the_coordinator_asks_for_the_head_resource_only_where_the_cluster_has_it(
    cluster: dict[str, float], expected: dict[str, Any]
) -> None:
    assert cli.coordinator_placement(cluster) == expected
