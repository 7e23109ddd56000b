"""B6's Kafka Connect configuration, as the harness writes it (no JVM, no services)."""

from __future__ import annotations

from pathlib import Path

from loom_bench.systems import connect

DSN = "postgresql://loom:s%40cret@127.0.0.1:35732/loom_bench"


def test_jdbc_url_from_the_dsn() -> None:
    assert connect.jdbc_url(DSN, False) == ("jdbc:postgresql://127.0.0.1:35732/loom_bench", "loom", "s@cret")
    assert connect.jdbc_url(DSN, True)[0].endswith("/loom_bench?reWriteBatchedInserts=true")


def test_default_variant_keeps_connect_and_debezium_defaults() -> None:
    found = connect.connector_properties("default", "bench-1", "t", "bench-1", DSN)
    assert not {"tasks.max", "batch.size", "consumer.override.max.poll.records"} & found.keys()
    assert "reWriteBatchedInserts" not in found["connection.url"]


def test_tuned_variant_and_the_upsert_mapping() -> None:
    found = connect.connector_properties("tuned", "bench-1", "a,b", "bench-1", DSN)
    assert (found["tasks.max"], found["batch.size"], found["consumer.override.max.poll.records"]) == (
        "2",
        "5000",
        "5000",
    )
    assert found["connection.url"].endswith("?reWriteBatchedInserts=true")
    assert (found["insert.mode"], found["primary.key.fields"]) == ("upsert", "topic,partition,offset")
    assert (found["collection.name.format"], found["quote.identifiers"]) == ("events", "true")
    assert found["consumer.override.group.id"] == "bench-1" and found["topics"] == "a,b"


def test_worker_properties_and_command(tmp_path: Path) -> None:
    worker = connect.worker_properties("127.0.0.1:39392", tmp_path / "c", tmp_path, 41234)
    assert worker["listeners"] == "http://127.0.0.1:41234" and worker["plugin.path"] == str(tmp_path / "c" / "plugins")
    path = connect.write_properties(tmp_path / "w.properties", worker)
    assert "offset.flush.interval.ms=1000\n" in path.read_text()
    command = connect.java_command(tmp_path / "c", tmp_path, path, tmp_path / "k.properties")
    assert command[0] == "java" and command[-3] == "org.apache.kafka.connect.cli.ConnectStandalone"
    assert (tmp_path / "log4j2.properties").is_file()
    assert 0 < connect.free_port() < 65536
