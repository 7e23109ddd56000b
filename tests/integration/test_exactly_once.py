"""Every offset lands exactly once, malformed input and database rejects included.

The job runs as users run it (``python -m loom_ray.main``) on real Kafka, PostgreSQL and a local Ray; then
every offset of the topic is accounted for (``tests.support.pipeline.Accounting``): none lost, none twice
(counted from the append-only ``loom_audit``, which primary keys cannot hide), none in both tables, and
``loom_offsets`` at the high watermarks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from loom_ray import loadgen
from tests.support.pipeline import (
    account,
    fill,
    group_offsets,
    high_watermarks,
    pipeline_env,
    scalar,
    start_main,
)
from tests.support.services import Endpoints

KIND_TO_ERROR = {
    "invalid_utf8": "InvalidUtf8",
    "truncated_json": "InvalidJson",
    "not_json": "InvalidJson",
    "nul_in_string": "NulCharacter",
    "deep_nesting": "InvalidJson",
    "huge_number": "InvalidJson",
    "oversize": "Oversize",
    "empty": "EmptyValue",
    "null_value": "NullValue",
    "lone_surrogate": "InvalidJson",
}


def test_every_offset_once_with_malformed_input_and_db_rejects(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    messages, ratio, seed = 200_000, 0.01, 7
    fill(endpoints, topic_name, messages, ratio=ratio, seed=str(seed), ack_log=str(tmp_path / "acks"))
    # A CHECK constraint that refuses some valid events at write time: they must be isolated by bisection.
    scalar(
        endpoints,
        f"ALTER TABLE loom_messages ADD CONSTRAINT reject_{topic_name.replace('-', '_')} "
        f"CHECK (topic <> '{topic_name}' OR (payload->>'seq')::bigint % 997 <> 0) NOT VALID",
    )
    try:
        env = pipeline_env(endpoints, topic_name)
        log = tmp_path / "main.log"
        process = start_main(env, "--exit-when-drained", log=log)
        assert process.wait(600) == 0, log.read_text()[-3000:]
    finally:
        scalar(endpoints, f"ALTER TABLE loom_messages DROP CONSTRAINT reject_{topic_name.replace('-', '_')}")
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert result.expected == messages
    planned = Counter(loadgen.plan(seq, ratio, seed) for seq in range(messages))
    refused = sum(1 for seq in range(0, messages, 997) if loadgen.plan(seq, ratio, seed) is None)
    by_class = Counter(
        dict(
            scalar(
                endpoints,
                "SELECT array_agg(ARRAY[error_class, count::text]) FROM (SELECT error_class, count(*) "
                "FROM loom_dead_letters WHERE topic = $1 AND stage <> 'db_row' GROUP BY 1) AS t",
                topic_name,
            )
        )
    )
    expected_classes: Counter[str] = Counter()
    for kind, n in planned.items():
        if kind is not None:
            expected_classes[KIND_TO_ERROR[kind]] += n
    assert {k: int(v) for k, v in by_class.items()} == dict(expected_classes)
    db_rows = scalar(
        endpoints,
        "SELECT count(*) FROM loom_dead_letters WHERE topic = $1 AND stage = 'db_row' AND sqlstate = '23514'",
        topic_name,
    )
    assert db_rows == refused > 0
    assert result.dead_letters == sum(expected_classes.values()) + refused
    summary = [line for line in log.read_text().splitlines() if line.startswith("summary:")]
    assert summary and f"messages={messages}" in summary[-1], summary
    # The Kafka group mirrors PostgreSQL's offsets after the drain, so lag tools see the truth.
    marks = high_watermarks(endpoints.kafka, topic_name)
    assert group_offsets(endpoints, topic_name, 12) == {p: high for p, (_, high) in marks.items()}
