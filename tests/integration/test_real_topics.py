"""Topics as users run them: transactions, retention, recreation, added partitions, a deleted neighbour.

Each test runs the real job on the real broker and PostgreSQL and checks the per-offset rule: every offset
below the high watermark ends as a row, a dead letter, a recorded gap (loom_gaps), or an offset that holds
no record for a read_committed consumer, and a drained partition shows lag 0.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from tests.support.pipeline import (
    account,
    committed,
    group_offsets,
    high_watermarks,
    pipeline_env,
    read_committed_offsets,
    scalar,
    start_main,
    stop_group,
    stored_offsets,
    wait_until,
)
from tests.support.services import Endpoints


def _admin(endpoints: Endpoints) -> AdminClient:
    """An admin client; keep a reference while its futures are pending (they never complete once it is gone)."""
    return AdminClient({"bootstrap.servers": endpoints.kafka})


def _create(endpoints: Endpoints, topic: str, partitions: int) -> None:
    admin = _admin(endpoints)

    def created() -> bool:
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:  # a deletion still under way
                return False
            raise
        return True

    wait_until(created, 60, f"topic {topic} created")


def _produce(endpoints: Endpoints, topic: str, counts: dict[int, int], tag: str = "") -> None:
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})
    for partition, n in counts.items():
        for i in range(n):
            producer.produce(topic, orjson.dumps({"tag": tag, "i": i}), key=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0


def _drain(endpoints: Endpoints, topic: str, log: Path, **overrides: object) -> str:
    """Run the job until drained; its output."""
    process = start_main(pipeline_env(endpoints, topic, **overrides), "--exit-when-drained", log=log)
    try:
        assert process.wait(240) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    return log.read_text()


def _assert_recreated(endpoints: Endpoints, topic: str) -> None:
    """After 20 + 20 "old" records, the topic recreated with 5 + 40 "new" ones: both incarnations complete,
    the old one untouched, one topic_recreated gap per partition and its alert."""
    assert stored_offsets(endpoints, topic, incarnation=0) == {0: list(range(20)), 1: list(range(20))}
    assert stored_offsets(endpoints, topic, incarnation=1) == {0: list(range(5)), 1: list(range(40))}
    new_rows = "SELECT count(*) FROM loom_messages WHERE topic = $1 AND incarnation = 1 AND payload->>'tag' = 'new'"
    assert scalar(endpoints, new_rows, topic) == 45
    offsets = (
        'SELECT array_agg(ARRAY[incarnation, next_offset] ORDER BY "partition") FROM loom_offsets WHERE topic = $1'
    )
    assert scalar(endpoints, offsets, topic) == [[1, 5], [1, 40]]
    gaps = (
        'SELECT array_agg(ARRAY["partition", incarnation, from_offset] ORDER BY "partition") FROM loom_gaps '
        "WHERE topic = $1 AND reason = 'topic_recreated' AND to_offset IS NULL"
    )
    assert scalar(endpoints, gaps, topic) == [[0, 0, 20], [1, 0, 20]]
    alerts = "SELECT count(*) FROM v_consumer_alerts WHERE topic = $1 AND alert_kind = 'gap'"
    assert scalar(endpoints, alerts, topic) == 2


def test_transactional_topic_drains_to_the_high_watermark(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    _create(endpoints, topic_name, 3)
    producer = Producer({"bootstrap.servers": endpoints.kafka, "transactional.id": f"tx-{topic_name}"})
    producer.init_transactions()
    for txn in range(7):
        aborted = txn % 3 == 2 or txn == 6  # the last transaction aborts: every partition ends on a marker
        producer.begin_transaction()
        for partition in range(3):
            for i in range(40):
                value = {"txn": txn, "i": i, "aborted": aborted}
                producer.produce(topic_name, orjson.dumps(value), partition=partition)
        producer.flush(30)
        (producer.abort_transaction if aborted else producer.commit_transaction)()
    marks = high_watermarks(endpoints.kafka, topic_name)
    _drain(endpoints, topic_name, tmp_path / "main.log")

    delivered = read_committed_offsets(endpoints.kafka, topic_name)
    assert sum(len(o) for o in delivered.values()) == 4 * 3 * 40
    assert {p: sorted(o) for p, o in delivered.items()} == stored_offsets(endpoints, topic_name)
    assert (
        scalar(
            endpoints, "SELECT count(*) FROM loom_messages WHERE topic = $1 AND (payload->>'aborted')::bool", topic_name
        )
        == 0
    )
    stored = scalar(
        endpoints, 'SELECT array_agg(next_offset ORDER BY "partition") FROM loom_offsets WHERE topic = $1', topic_name
    )
    assert stored == [marks[p][1] for p in range(3)]  # past the trailing abort markers
    assert group_offsets(endpoints, topic_name, 3) == {p: marks[p][1] for p in range(3)}
    lags = scalar(endpoints, "SELECT array_agg(lag) FROM v_consumer_performance_monitor WHERE topic = $1", topic_name)
    assert lags == [0, 0, 0]
    assert account(endpoints, topic_name).duplicated == 0


def test_records_removed_by_retention_become_a_recorded_gap(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    _create(endpoints, topic_name, 2)
    _produce(endpoints, topic_name, {0: 100, 1: 100}, tag="first")
    _drain(endpoints, topic_name, tmp_path / "first.log")
    _produce(endpoints, topic_name, {0: 100, 1: 100}, tag="second")
    # The job is down while retention (here DeleteRecords) removes offsets 100..149 of partition 0 unread.
    admin = _admin(endpoints)
    admin.delete_records([TopicPartition(topic_name, 0, 150)])[TopicPartition(topic_name, 0, 150)].result(30)
    # `latest` must not matter: it is for partitions seen for the first time, never an implicit reset.
    output = _drain(endpoints, topic_name, tmp_path / "second.log", kafka_auto_offset_reset="latest")
    assert "messages=150 rows=150 dead_letters=0 offsets=200 gap_offsets=50 " in output

    assert stored_offsets(endpoints, topic_name) == {0: [*range(100), *range(150, 200)], 1: list(range(200))}
    gaps = scalar(
        endpoints,
        """SELECT array_agg(ARRAY["partition", incarnation, from_offset, to_offset]::text || reason)
           FROM loom_gaps WHERE topic = $1""",
        topic_name,
    )
    assert gaps == ["{0,0,100,150}offset_out_of_range"]
    assert committed(endpoints, topic_name) == 400
    alerts = scalar(
        endpoints, "SELECT array_agg(detail) FROM v_consumer_alerts WHERE topic = $1 AND alert_kind = 'gap'", topic_name
    )
    assert alerts is not None and "offsets 100..149" in alerts[0] and "retention" in alerts[0]


def test_recreated_topic_starts_a_new_incarnation(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    _create(endpoints, topic_name, 2)
    _produce(endpoints, topic_name, {0: 20, 1: 20}, tag="old")
    _drain(endpoints, topic_name, tmp_path / "first.log")
    admin = _admin(endpoints)
    admin.delete_topics([topic_name])[topic_name].result(30)
    _create(endpoints, topic_name, 2)
    # Partition 0's new log ends below the stored offset, partition 1's above it: the topic id tells both.
    _produce(endpoints, topic_name, {0: 5, 1: 40}, tag="new")
    _drain(endpoints, topic_name, tmp_path / "second.log")

    _assert_recreated(endpoints, topic_name)


def test_topic_recreated_while_running_is_handed_back_and_read_as_a_new_incarnation(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    _create(endpoints, topic_name, 2)
    _produce(endpoints, topic_name, {0: 20, 1: 20}, tag="old")
    log = tmp_path / "main.log"
    process = start_main(pipeline_env(endpoints, topic_name), log=log)
    try:
        wait_until(lambda: committed(endpoints, topic_name) == 40, 120, "the first drain", running=(process, log))
        admin = _admin(endpoints)
        admin.delete_topics([topic_name])[topic_name].result(30)
        wait_until(lambda: "no longer exists" in log.read_text(), 60, "the hand-back", running=(process, log))
        _create(endpoints, topic_name, 2)
        _produce(endpoints, topic_name, {0: 5, 1: 40}, tag="new")
        wait_until(
            lambda: stored_offsets(endpoints, topic_name, incarnation=1) == {0: list(range(5)), 1: list(range(40))},
            120,
            "the new incarnation ingested",
            running=(process, log),
        )
        stop_group(process, signal.SIGTERM)
    finally:
        stop_group(process)
    _assert_recreated(endpoints, topic_name)


def test_added_partitions_start_at_their_first_offset_while_a_deleted_topic_fails(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    other = f"{topic_name}-other"
    _create(endpoints, topic_name, 2)
    _create(endpoints, other, 1)
    _produce(endpoints, topic_name, {0: 10, 1: 10}, tag="before")
    env = pipeline_env(
        endpoints, topic_name, kafka_auto_offset_reset="latest", health_check_interval_s="3", min_actors="2"
    )
    env["LOOM_KAFKA_TOPICS"] = f"{topic_name},{other}"
    log = tmp_path / "main.log"
    process = start_main(env, log=log)
    try:
        wait_until(
            lambda: (
                scalar(endpoints, "SELECT count(*) FROM loom_offsets WHERE topic = ANY($1)", [topic_name, other]) == 3
            ),
            120,
            "the first claims",
            running=(process, log),
        )
        # Each topic is spread over both actors: the two partitions of topic_name have two owners (balanced
        # only in all, sorted order gave one actor both and the other actor the other topic).
        wait_until(
            lambda: (
                scalar(endpoints, "SELECT count(DISTINCT owner) FROM loom_offsets WHERE topic = $1", topic_name) == 2
            ),
            60,
            "topic_name's partitions on both actors",
            running=(process, log),
        )
        # One topic's metadata now fails for good; the other must still be coordinated.
        admin = _admin(endpoints)
        admin.delete_topics([other])[other].result(30)
        admin.create_partitions([NewPartitions(topic_name, 4)])[topic_name].result(30)
        _produce(endpoints, topic_name, {0: 5, 2: 7, 3: 7}, tag="after")
        wait_until(
            lambda: committed(endpoints, topic_name) == 15 + 7 + 7 + 10,
            120,
            "the added partitions drained from their first offset",
            running=(process, log),
        )
        stop_group(process, signal.SIGTERM)
    finally:
        stop_group(process)
    stored = stored_offsets(endpoints, topic_name)
    # Partitions 0 and 1 were first seen with `latest`: they start at their end then (10).
    assert stored == {0: list(range(10, 15)), 2: list(range(7)), 3: list(range(7))}
    assert "metadata failed" in log.read_text()


def test_a_commit_lost_on_a_quiet_partition_is_replayed(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    _create(endpoints, topic_name, 2)
    _produce(endpoints, topic_name, {0: 300, 1: 300})
    log = tmp_path / "main.log"
    process = start_main(pipeline_env(endpoints, topic_name), log=log)
    try:
        wait_until(lambda: committed(endpoints, topic_name) == 600, 120, "the drain", running=(process, log))
        time.sleep(2)  # a health check sees the final commit
        # What a PostgreSQL crash with synchronous_commit=off leaves: the last commit of partition 0 is gone,
        # rows, audit and offset together, and no record arrives to make the consumer flush again.
        scalar(
            endpoints,
            """WITH last AS (SELECT start_offset, end_offset, ctid FROM loom_audit
                             WHERE topic = $1 AND "partition" = 0 ORDER BY txid DESC LIMIT 1),
                    rows AS (DELETE FROM loom_messages m USING last WHERE m.topic = $1 AND m."partition" = 0
                             AND m."offset" >= last.start_offset AND m."offset" < last.end_offset),
                    audit AS (DELETE FROM loom_audit a USING last WHERE a.ctid = last.ctid)
               UPDATE loom_offsets o SET next_offset = last.start_offset FROM last
               WHERE o.topic = $1 AND o."partition" = 0""",
            topic_name,
        )
        assert committed(endpoints, topic_name) < 600
        wait_until(
            lambda: committed(endpoints, topic_name) == 600, 60, "the lost commit replayed", running=(process, log)
        )
        stop_group(process, signal.SIGTERM)
    finally:
        stop_group(process)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert "lost a commit" in log.read_text()
