"""The load generator's --format options without Kafka: which options and kinds each format takes, and the
Debezium change stream (deterministic, a delete followed by its tombstone, rows in order per key). Through a
real registry and broker: tests/integration/test_formats.py."""

from __future__ import annotations

import orjson
import pytest

from loom_ray.loadgen import main
from loom_ray.loadgen.debezium import ChangeEncoder, ChangeStream


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--format", "avro"], "writes through a Schema Registry"),
        (["--format", "json", "--kinds", "undecodable"], "unknown kind(s) undecodable for --format json"),
        (["--format", "avro", "--schema-registry-url", "http://r", "--kinds", "not_json"], "choose from no_magic_byte"),
        (["--format", "debezium", "--ack-log", "x"], "--ack-log is for the formats whose key is str(seq)"),
        (["--format", "debezium", "--debezium-encoding", "avro"], "writes through a Schema Registry"),
    ],
)
def test_options_that_do_not_fit_the_format_are_refused(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOM_SCHEMA_REGISTRY_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["--topic", "t", "--partitions", "1", "--messages", "1", "--size", "200", *argv])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_the_change_stream_is_deterministic_and_ends_as_its_rows() -> None:
    one, two = ChangeStream(20, 3), ChangeStream(20, 3)
    changes = [one.change(seq) for seq in range(500)]
    assert changes == [two.change(seq) for seq in range(500)]
    rows: dict[int, object] = {}
    for op, key, before, after in changes:
        assert (key in rows) == (op != "c")
        if op == "d":
            assert after is None
            del rows[key]
        else:
            assert before is None
            rows[key] = after
    assert rows == one.rows()
    ops = {op for op, *_ in changes}
    assert ops == {"c", "u", "d"}
    deletes = [before for op, _, before, _ in changes if op == "d"]
    assert None in deletes and any(d is not None for d in deletes)  # with and without a before image


def test_a_delete_is_followed_by_its_tombstone_with_the_same_key() -> None:
    encoder = ChangeEncoder("json", "accounts", None)
    (event, event_key), (tombstone, tombstone_key) = [
        (value, key) for key, value in encoder.messages("d", 7, {"id": 7}, None, 10)
    ]
    assert orjson.loads(event_key) == {"id": 7} and tombstone_key == event_key and tombstone is None
    assert event is not None
    parsed = orjson.loads(event)
    assert (parsed["op"], parsed["before"]["id"], parsed["after"]) == ("d", 7, None)
    assert parsed["source"]["lsn"] > 0
    ((_, created),) = encoder.messages("c", 7, None, {"id": 7, "balance": None, "updated_at": None}, 11)
    assert created is not None and orjson.loads(created)["source"]["lsn"] > parsed["source"]["lsn"]
