"""The names of the record formats, and ``LOOM_FORMATS`` parsed: which topic is read in which format.

Imported by the settings (so it holds no heavy imports) and by the routes file's model.
"""

from __future__ import annotations

from typing import Literal, get_args

Format = Literal["json", "avro", "protobuf", "json_schema"]
FORMATS: tuple[str, ...] = get_args(Format)
JSON: Format = "json"


def parse_formats(entries: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """``LOOM_FORMATS``' entries (``topic=format``, and at most one bare ``format`` for the other topics) as
    ``(format by topic, the others' format)``; raises ValueError saying what to write."""
    by_topic: dict[str, str] = {}
    default: str | None = None
    for entry in entries:
        topic, _, name = entry.rpartition("=")
        if name not in FORMATS:
            raise ValueError(f"{entry!r}: the format must be one of {', '.join(FORMATS)} (e.g. orders=avro)")
        if not topic:
            if "=" in entry or default is not None:
                raise ValueError(f"{entry!r}: give one bare format (for the topics not named) at most, and no '=x'")
            default = name
        elif topic in by_topic:
            raise ValueError(f"topic {topic} is named twice")
        else:
            by_topic[topic] = name
    return by_topic, default or JSON
