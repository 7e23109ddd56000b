"""The filter the operations share (``--topic --route --class --stage --since --until``), and the topics an
operation may act on.

Pure: :func:`where` turns a filter into SQL conditions on ``loom_dead_letters`` with bound parameters (never a
value in the SQL text); :func:`topics_of` checks the filter against the deployment's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loom_ray.errors import OperationError
from loom_ray.routes.model import RouteSet

DEFAULT_SINK = "loom_messages"  # what the dead-letter summary calls the route of a topic no route takes


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters (or topics) an operation is about; every field unset selects everything."""

    topics: tuple[str, ...] = ()
    route: str | None = None
    error_class: str | None = None
    stage: str | None = None
    since: datetime | None = None  # failed_at at or after
    until: datetime | None = None  # failed_at before

    def as_dict(self) -> dict[str, Any]:
        """What was asked, for ``loom_operations.selection``."""
        found = {
            "topics": list(self.topics) or None,
            "route": self.route,
            "class": self.error_class,
            "stage": self.stage,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
        }
        return {key: value for key, value in found.items() if value is not None}


def route_name(routes: RouteSet, topic: str) -> str:
    """The route that takes ``topic``, or :data:`DEFAULT_SINK`."""
    route = routes.route_for(topic)
    return DEFAULT_SINK if route is None else route.name


def topics_of(selected: Filter, configured: tuple[str, ...], routes: RouteSet) -> tuple[str, ...]:
    """The topics ``selected`` names (its ``--topic`` values, or its route's topics), all of them among the
    deployment's ``configured`` topics; every configured topic when it names none. Raises
    :class:`OperationError` for a topic the deployment does not ingest or a route that does not exist."""
    unknown = sorted(set(selected.topics) - set(configured))
    if unknown:
        raise OperationError(
            f"topics {', '.join(unknown)} are not among LOOM_KAFKA_TOPICS ({', '.join(configured)}): run ctl with "
            "the environment of the deployment that ingests them"
        )
    topics = selected.topics or configured
    if selected.route is None:
        return tuple(topics)
    names = [route.name for route in routes.routes]
    if selected.route not in names and selected.route != DEFAULT_SINK:
        raise OperationError(
            f"no route {selected.route!r} in LOOM_ROUTES_FILE (routes: {', '.join(names) or 'none'}; "
            f"{DEFAULT_SINK} for the topics no route takes)"
        )
    chosen = tuple(t for t in topics if route_name(routes, t) == selected.route)
    if not chosen:
        raise OperationError(f"route {selected.route!r} takes none of the topics {', '.join(topics)}")
    return chosen


def where(selected: Filter, topics: tuple[str, ...] | None, alias: str = "d") -> tuple[str, list[Any]]:
    """SQL conditions on ``loom_dead_letters`` (as ``alias``) for ``selected`` and ``topics`` (None: any
    topic), and their parameters, numbered from ``$1``."""
    conditions: list[str] = []
    parameters: list[Any] = []

    def add(condition: str, value: Any) -> None:
        parameters.append(value)
        conditions.append(condition.format(a=alias, n=len(parameters)))

    if topics is not None:
        add("{a}.topic = ANY(${n}::text[])", list(topics))
    if selected.error_class is not None:
        add("{a}.error_class = ${n}", selected.error_class)
    if selected.stage is not None:
        add("{a}.stage = ${n}", selected.stage)
    # Times travel as text: a connection with the sink's codecs (loom_ray.sink.codecs) binds timestamptz as int.
    if selected.since is not None:
        add("{a}.failed_at >= ${n}::text::timestamptz", selected.since.isoformat())
    if selected.until is not None:
        add("{a}.failed_at < ${n}::text::timestamptz", selected.until.isoformat())
    return " AND ".join(conditions) or "true", parameters
