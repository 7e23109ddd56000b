"""The routes file (``LOOM_ROUTES_FILE``, TOML): parsed and validated once, at start, into frozen models.

Read by :class:`loom_ray.settings.Settings` when it is built, so a bad file stops the start before anything
connects, with a :class:`~loom_ray.errors.RoutesFileError` naming the file, the route and what to change;
the parsed routes travel to the consumer actors inside the settings (the file is needed on the driver's
machine only), with each table's shape as the driver read it at start (:meth:`RouteSet.with_tables`). The
format, with every key::

    [[route]]
    name = "orders"                 # names the route in dead letters, metrics and loom_route_counts
    topic = "orders"                # or topic_pattern = "orders\\\\..*" (a regular expression, whole name)
    table = "shop.orders"           # schema.table, or table (then in LOOM_DB_SCHEMA); names exactly as the
                                    # catalog spells them ("Sales.Orders"; '"a.b".t' for a dot in a name)
    mode = "upsert"                 # or "insert" (the default): append every record
    key = ["order_id"]              # columns of a unique key of the table; required for upsert
    version = "placed_at"           # upsert: a column whose greater value is the newer record (optional)
    on_duplicate = "ignore"         # insert with a key: a repeated key is a dead letter (default) or ignored
    on_tombstone = "delete"         # or "dead_letter" (the default); delete needs every key column from the key
    auto_create = true              # create the table (and schema) when missing; default false
    add_columns = true              # add the route's columns an existing table lacks (nullable); default false
    format = "avro"                 # how the topics' values are encoded (else LOOM_FORMATS' choice, else json)
    envelope = "debezium"           # values are Debezium change events (see below); default "none"
    position = "src_position"       # debezium: the column holding each event's source position (the version)
    on_truncate = "ignore"          # debezium: a truncate event is a dead letter (default) or ignored

    [route.columns]                 # in table order
    order_id = { from = "key" }                                 # the whole Kafka key, as decimal digits
    customer = { path = "customer.name", required = true }
    amount   = { type = "numeric(12,2)", round = true }        # type: optional for an existing table
    placed   = { path = "placed_at" }
    "createdAt" = { path = "created_at" }                      # a name as the table spells it
    source   = { from = "header", header = "source" }
    kafka_ts = { from = "timestamp" }
    src_off  = { from = "offset" }                             # also from = "topic", "partition"

Each column's type is the table's (read from the catalog at start: :mod:`loom_ray.routes.catalog`); a
``type`` given here must name the same type, and is needed where ``auto_create`` creates the table.
Instead of (or besides) ``[route.columns]``, ``model = "package.module:Class"`` names a pydantic model: its
fields become columns read from the validated value, and it validates each value
(:mod:`loom_ray.routes.models`); ``[route.columns]`` then add or replace columns, read from the value as
it came.

``from`` is ``value`` (default: a JSON path into the value), ``key`` (the whole key as bytes, or with a
``path`` the key as JSON), ``header``, ``timestamp``, ``topic``, ``partition`` or ``offset``. A path is
dotted names, with a number for a list's element (``items.0.sku``). Conversions: :mod:`loom_ray.routes.types`.
A topic no route matches is stored in ``loom_messages``, as without a routes file.

With ``envelope = "debezium"`` (an upsert route) each value is a Debezium change event, JSON with or without
Kafka Connect's schema envelope, or a registry format (:mod:`loom_ray.formats.debezium`): the columns' paths
address the row image, ``after`` for a create, read or update (upserted) and ``before`` for a delete (deleted
by the key columns; from the Kafka key when ``before`` is null); the tombstone that follows a delete is
ignored, a truncate is a dead letter unless ``on_truncate = "ignore"``. ``position`` names the column that
stores each event's source position (``source.lsn``, else ``source.ts_ms`` and the offset: see
:func:`loom_ray.formats.debezium.position`), which is then the route's ``version``: an older event never
overwrites a newer one.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from loom_ray.errors import RoutesFileError
from loom_ray.formats.names import Format
from loom_ray.routes.catalog import TableShape, quote_identifier
from loom_ray.routes.models import model_columns

Source = Literal["value", "key", "header", "timestamp", "topic", "partition", "offset"]
RESERVED_PREFIX = "_loom"  # the staging table's own columns (routes/sql.py)
_TYPE_TEXT = re.compile(r'^[A-Za-z_][A-Za-z0-9_ ."(),\[\]]{0,200}$')
_QUALIFIED = re.compile(r'\s*("(?:[^"]|"")+"|[^."]+)\s*')


def _identifier(value: str, what: str) -> str:
    """A name as the catalog spells it: any characters but NUL, at most 63 bytes (PostgreSQL's limit)."""
    if not value or "\x00" in value or len(value.encode("utf-8")) > 63:
        raise ValueError(f"{what} {value!r} must be a name of 1 to 63 bytes (as the table spells it, any case)")
    return value


def split_qualified(text: str) -> tuple[str | None, str]:
    """``schema.table`` or ``table`` into its names, exactly as written; a name in double quotes may hold a
    dot (``"a.b".t``). Raises ValueError saying how to write it."""
    parts = []
    position = 0
    while True:
        match = _QUALIFIED.match(text, position)
        if match is None:
            raise ValueError(f"table {text!r}: write schema.table or table ('\"a.b\".t' for a dot in a name)")
        name = match.group(1)
        parts.append(name[1:-1].replace('""', '"') if name.startswith('"') else name)
        position = match.end()
        if position == len(text):
            break
        if text[position] != ".":
            raise ValueError(f"table {text!r}: write schema.table or table ('\"a.b\".t' for a dot in a name)")
        position += 1
    if len(parts) > 2:
        raise ValueError(f"table {text!r}: write schema.table or table ('\"a.b\".t' for a dot in a name)")
    for part in parts:
        _identifier(part, "schema" if len(parts) == 2 and part is parts[0] else "table")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


class Column(BaseModel):
    """One column of a route's table and where its value comes from."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = ""  # set from the key of [route.columns]
    type: str | None = None  # checked against the table at start (to_regtype), the DDL of auto_create
    source: Source = Field("value", alias="from")
    path: tuple[str, ...] = ()
    header: str | None = None
    required: bool = False
    round: bool = False  # numeric(p,s), time(p), timestamp(p): round extra digits as PostgreSQL does

    @field_validator("type")
    @classmethod
    def _type_text(cls, value: str | None) -> str | None:
        if value is not None and not _TYPE_TEXT.match(value):
            raise ValueError(f"type {value!r} is not a PostgreSQL type name (e.g. bigint, varchar(64), numeric(12,2))")
        return None if value is None else " ".join(value.split())

    @field_validator("path", mode="before")
    @classmethod
    def _split_path(cls, value: object) -> object:
        if isinstance(value, str):
            parts = tuple(value.removeprefix("$.").split("."))
            if not all(parts):
                raise ValueError(f"path {value!r} has an empty step; write dotted names, e.g. customer.name")
            return parts
        return value

    @model_validator(mode="after")
    def _fits_source(self) -> Column:
        if self.source == "header" and not self.header:
            raise ValueError('from = "header" needs header = "<header name>"')
        if self.source != "header" and self.header is not None:
            raise ValueError(f'header = {self.header!r} is only read with from = "header"')
        if self.path and self.source not in ("value", "key"):
            raise ValueError(f'path is only read with from = "value" or "key", not from = "{self.source}"')
        return self

    @property
    def reads_bytes(self) -> bool:
        """Whether the value is the raw bytes of the key or a header (not a JSON path)."""
        return self.source == "header" or (self.source == "key" and not self.path)

    @property
    def json_path(self) -> tuple[str, ...]:
        """The path into the value (or JSON key): the given one, else the column's name."""
        return self.path or (self.name,)

    @property
    def quoted(self) -> str:
        """The column's name as a quoted SQL identifier."""
        return quote_identifier(self.name)


class Route(BaseModel):
    """One ``[[route]]``: which topics go to which table, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    topic: str | None = None
    topic_pattern: str | None = None
    table: str
    mode: Literal["insert", "upsert"] = "insert"
    key: tuple[str, ...] = ()
    version: str | None = None  # upsert: the column whose greater value is the newer record
    on_duplicate: Literal["dead_letter", "ignore"] = "dead_letter"
    on_tombstone: Literal["delete", "dead_letter"] = "dead_letter"
    auto_create: bool = False
    add_columns: bool = False
    model: str | None = None  # "module:Class": a pydantic model whose fields give columns (loom_ray.routes.models)
    columns: tuple[Column, ...] = ()
    model_fields_read: tuple[str, ...] = ()  # set from model: the columns read from the model's validated value
    format: Format | None = None  # how the route's topics are encoded; None: LOOM_FORMATS decides (json by default)
    envelope: Literal["none", "debezium"] = "none"
    position: str | None = None  # debezium: the column that stores each event's source position (the version)
    on_truncate: Literal["dead_letter", "ignore"] = "dead_letter"  # debezium: what a truncate event does

    @model_validator(mode="before")
    @classmethod
    def _position_is_version(cls, data: Any) -> Any:
        """A Debezium route's ``position`` column is its version unless the route names another."""
        if isinstance(data, dict) and data.get("position") is not None and data.get("version") is None:
            return {**data, "version": data["position"]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _model_fields(cls, data: Any) -> Any:
        """With ``model``, the model's fields are the columns (read from the validated value); the columns of
        ``[route.columns]`` add to or replace them (read from the value as it came)."""
        if isinstance(data, dict) and data.get("model_fields_read") and data.get("model") is None:
            raise ValueError("model_fields_read is set by loom-ray from model; remove it")
        if isinstance(data, dict) and data.get("model") is not None:
            explicit = data.get("columns") or {}
            if not isinstance(explicit, dict):
                return data
            fields = model_columns(str(data["model"]))
            return {
                **data,
                "columns": {**fields, **explicit},
                "model_fields_read": tuple(name for name in fields if name not in explicit),
            }
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9._-]{1,100}$", value):
            raise ValueError(f"name {value!r}: use letters, digits, '.', '_' or '-' (at most 100)")
        return value

    @field_validator("topic_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"topic_pattern {value!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        split_qualified(value)
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _named_columns(cls, value: object) -> object:
        if isinstance(value, dict):
            if not value:
                raise ValueError('declare at least one column under [route.columns], or model = "module:Class"')
            named = []
            for name, spec in value.items():
                _identifier(name, "column")
                if name.startswith(RESERVED_PREFIX):
                    raise ValueError(f"column {name!r}: names starting with {RESERVED_PREFIX} are loom-ray's own")
                if not isinstance(spec, dict):
                    raise ValueError(f'column {name}: write {name} = {{ path = "...", ... }}')
                named.append({**spec, "name": name})
            return named
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        if (self.topic is None) == (self.topic_pattern is None):
            raise ValueError("give exactly one of topic or topic_pattern")
        if not self.columns:
            raise ValueError('declare the columns under [route.columns], or model = "module:Class"')
        by_name = {c.name: c for c in self.columns}
        self._check_envelope(by_name)
        unknown = [k for k in self.key if k not in by_name]
        if unknown:
            raise ValueError(f"key names {', '.join(unknown)}, not among the columns; declare it under [route.columns]")
        if len(set(self.key)) != len(self.key):
            raise ValueError("key names a column twice")
        if self.mode == "upsert" and not self.key:
            raise ValueError('mode = "upsert" needs key = ["<column>", ...]: the columns that identify a row')
        if self.version is not None:
            if self.mode != "upsert":
                raise ValueError('version orders the records of a key for mode = "upsert" only')
            if self.version not in by_name:
                raise ValueError(
                    f"version names {self.version}, not among the columns; declare it under [route.columns]"
                )
            if self.version in self.key:
                raise ValueError(f"version {self.version} is part of the key; name a column outside it")
        if self.on_duplicate != "dead_letter" and not (self.mode == "insert" and self.key):
            raise ValueError('on_duplicate says what a repeated key does to mode = "insert" with a key')
        if self.on_tombstone == "delete":
            if self.mode != "upsert":
                raise ValueError('on_tombstone = "delete" needs mode = "upsert" (a key to delete by)')
            from_value = [k for k in self.key if by_name[k].source == "value"]
            if from_value:
                raise ValueError(
                    f'on_tombstone = "delete": a tombstone has no value, so key column {from_value[0]} must be '
                    'read from = "key" (or another source than the value)'
                )
        return self

    def _check_envelope(self, by_name: Mapping[str, Column]) -> None:
        """The settings only a Debezium route reads, and what such a route needs."""
        if self.envelope != "debezium":
            for name, value, default in (
                ("position", self.position, None),
                ("on_truncate", self.on_truncate, "dead_letter"),
            ):
                if value != default:
                    raise ValueError(f'{name} is read with envelope = "debezium" only')
            return
        if self.mode != "upsert":
            raise ValueError(
                'envelope = "debezium" needs mode = "upsert" and a key: creates and updates upsert the row, deletes '
                "delete it"
            )
        if self.on_tombstone != "dead_letter":
            raise ValueError(
                'envelope = "debezium": the delete event deletes the row and the tombstone after it is ignored; '
                "remove on_tombstone"
            )
        if self.position is not None:
            column = by_name.get(self.position)
            if column is None:
                raise ValueError(f"position names {self.position}, not among the columns; declare it (type numeric)")
            if column.source != "value" or column.path:
                raise ValueError(
                    f"column {self.position} holds the event's source position: give it neither from nor path"
                )

    @property
    def schema_name(self) -> str | None:
        """The table's schema, or None for LOOM_DB_SCHEMA."""
        return split_qualified(self.table)[0]

    @property
    def table_name(self) -> str:
        return split_qualified(self.table)[1]

    def label(self, default_schema: str) -> str:
        """The route's table, schema-qualified and quoted."""
        return f"{quote_identifier(self.schema_name or default_schema)}.{quote_identifier(self.table_name)}"

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` goes to this route."""
        if self.topic is not None:
            return topic == self.topic
        assert self.topic_pattern is not None
        return re.fullmatch(self.topic_pattern, topic) is not None


class RouteSet(BaseModel):
    """Every route of the file, in order: a topic takes the first route that matches it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    routes: tuple[Route, ...] = Field((), alias="route")
    _tables: Mapping[str, TableShape] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _distinct(self) -> RouteSet:
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"two routes are named {next(n for n in names if names.count(n) > 1)!r}")
        return self

    def route_for(self, topic: str) -> Route | None:
        """The route of ``topic``: the first that matches, or None (the topic goes to loom_messages)."""
        return next((r for r in self.routes if r.matches(topic)), None)

    def with_tables(self, tables: Mapping[str, TableShape]) -> RouteSet:
        """A copy that carries each route's table as the catalog described it (route name -> shape)."""
        copy = self.model_copy()
        copy._tables = dict(tables)
        return copy

    def table(self, route: str) -> TableShape:
        """The shape of ``route``'s table read at start; KeyError if the driver did not read it."""
        return self._tables[route]


def load_routes(path: Path) -> RouteSet:
    """Read and validate the routes file; raise :class:`RoutesFileError` naming the file, route and fix."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutesFileError(f"routes file {path}: cannot be read ({exc.strerror}); check LOOM_ROUTES_FILE") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RoutesFileError(f"routes file {path}: not valid TOML: {exc}") from None
    if not data.get("route"):
        raise RoutesFileError(f'routes file {path}: declares no route; add a [[route]] table (see README "Routes")')
    try:
        return RouteSet.model_validate(data)
    except ValidationError as exc:
        raise RoutesFileError(_describe(path, data, exc)) from None


def _describe(path: Path, data: dict[str, object], exc: ValidationError) -> str:
    """One line per error: the file, the route (by name), the key at fault and what to change."""
    lines = []
    routes = data.get("route")
    for error in exc.errors():
        location = list(error["loc"])
        where = ""
        if location[:1] == ["route"] and len(location) > 1 and isinstance(location[1], int):
            index = location[1]
            entry = routes[index] if isinstance(routes, list) and index < len(routes) else {}
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"route {name!r}" if name else f"route #{index + 1}"
            rest = location[2:]
            if rest[:1] == ["columns"] and len(rest) > 1 and isinstance(rest[1], int) and isinstance(entry, dict):
                columns = list(entry.get("columns", {}))
                rest = ["column", columns[rest[1]] if rest[1] < len(columns) else rest[1], *rest[2:]]
            if rest:
                where += ": " + " ".join(str(part) for part in rest)
        elif location:
            where = ".".join(str(part) for part in location)
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return f"routes file {path}:\n  " + "\n  ".join(lines)
