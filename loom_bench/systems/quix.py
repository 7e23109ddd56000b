"""B3, the Python peer: a quixstreams ``Application`` with its ``PostgreSQLSink``, same schema as ours.

Runs under the bench venv (quixstreams pins confluent-kafka and pydantic below loom-ray's), until SIGTERM.
Each message becomes one ``events`` row ("quix-same-schema", performance.md section 10): the parsed JSON
goes to the ``payload`` jsonb column and the metadata to the other columns, so PostgreSQL does the same
work as for every other system. The sink is told the table's primary key (with schema auto-update on, it
refuses a table whose key it does not know) but does plain INSERTs, not upserts. Everything else is quix's
default (schema auto-update, at-least-once, ``commit_interval`` 5 s unless ``--commit-interval``).
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from quixstreams import Application, message_context
from quixstreams.sinks.community.postgresql import PostgreSQLSink


def to_row(value: Any, key: Any, timestamp: int, _headers: Any) -> dict[str, Any]:
    """One ``events`` row: the message's coordinates, key, parsed value and CreateTime."""
    context = message_context()
    return {
        "topic": context.topic,
        "partition": context.partition,
        "offset": context.offset,
        "key": key,
        "payload": value,
        "kafka_ts": datetime.fromtimestamp(timestamp / 1000, UTC),
    }


def sink_for(dsn: str) -> PostgreSQLSink:
    """quix's PostgreSQL sink into ``events``, connection from a postgresql:// DSN."""
    parts = urlsplit(dsn)
    return PostgreSQLSink(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        dbname=parts.path.lstrip("/"),
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        table_name="events",
        include_metadata=False,
        primary_key_columns=["topic", "partition", "offset"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated")
    parser.add_argument("--group", required=True)
    parser.add_argument("--commit-interval", type=float, default=None)
    args = parser.parse_args()
    options: dict[str, Any] = {} if args.commit_interval is None else {"commit_interval": args.commit_interval}
    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
            **options,
        )
        for name in args.topics.split(","):
            topic = app.topic(name, value_deserializer="json", key_deserializer="bytes")
            app.dataframe(topic).apply(to_row, metadata=True).sink(sink_for(args.dsn))
        app.run()


if __name__ == "__main__":
    main()
