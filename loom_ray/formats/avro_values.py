"""What an Avro record fastavro decoded still needs before it is JSON: Connect's logical types and floats
that JSON cannot hold.

fastavro already returns Avro's own logical types as Python values (``decimal`` as a Decimal,
``timestamp-millis`` as an aware datetime, ``date``, ``time-*``, ``uuid``). A schema written by Confluent's
AvroConverter for Kafka Connect or Debezium also names Connect types on plain ones (``connect.name``:
``io.debezium.time.MicroTimestamp`` on a ``long``), which only :mod:`loom_ray.formats.connect` turns into
what they stand for; and a ``float`` or ``double`` may be NaN. :func:`fixer` compiles, once per schema, a
function that changes exactly those fields of a decoded record in place, or None when the schema has none
(then nothing runs per record).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from loom_ray.formats import connect
from loom_ray.formats.jsonify import finite

Fix = Callable[[Any], Any]
_FLOATS = frozenset({"float", "double"})
# Avro logical types fastavro converts itself: a connect.name beside one of these needs nothing more.
_FASTAVRO_LOGICAL = frozenset(
    {
        "decimal",
        "uuid",
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    }
)
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (float,),
    "double": (float,),
    "string": (str,),
    "bytes": (bytes,),
    "fixed": (bytes,),
    "enum": (str,),
    "array": (list,),
    "map": (dict,),
    "record": (dict,),
    "error": (dict,),
}


def fixer(schema: Any) -> Fix | None:
    """The in-place fix of records decoded with the Avro ``schema`` (parsed JSON), or None if none is needed."""
    return _Compiler().compile(schema, None)


class _Compiler:
    """Walks a schema once; named types are remembered by full name for later references (a recursive
    reference is left as it is: its fields are not fixed)."""

    def __init__(self) -> None:
        self._named: dict[str, Any] = {}
        self._open: set[str] = set()

    def compile(self, schema: Any, namespace: str | None) -> Fix | None:
        if isinstance(schema, str):
            if schema in _FLOATS:
                return finite
            found = self._named.get(schema) or self._named.get(f"{namespace}.{schema}")
            return None if found is None else self._compile_dict(found, namespace)
        if isinstance(schema, list):
            return self._union(schema, namespace)
        if isinstance(schema, Mapping):
            return self._compile_dict(schema, namespace)
        return None

    def _compile_dict(self, schema: Mapping[str, Any], namespace: str | None) -> Fix | None:
        if schema.get("logicalType") not in _FASTAVRO_LOGICAL:
            conversion = connect.converter(schema.get("connect.name"), schema.get("connect.parameters"))
            if conversion is not None:
                return conversion
        kind = schema.get("type")
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind in ("enum", "fixed"):
            self._named[_full_name(schema, namespace)] = schema
            return None
        if kind == "array":
            return _each(self.compile(schema["items"], namespace))
        if kind == "map":
            return _values(self.compile(schema["values"], namespace))
        return self.compile(kind, namespace)

    def _record(self, schema: Mapping[str, Any], namespace: str | None) -> Fix | None:
        full = _full_name(schema, namespace)
        if full in self._open:
            return None
        self._named[full] = schema
        inner = full.rpartition(".")[0] or None
        self._open.add(full)
        try:
            fixes = [(f["name"], fix) for f in schema["fields"] if (fix := self.compile(f["type"], inner)) is not None]
        finally:
            self._open.discard(full)
        return _record(fixes)

    def _union(self, branches: list[Any], namespace: str | None) -> Fix | None:
        fixes = []
        for branch in branches:
            fix = self.compile(branch, namespace)
            if fix is not None:
                fixes.append((_python_types(branch, self._named, namespace), fix))
        if not fixes:
            return None

        def union(value: Any) -> Any:
            for types, fix in fixes:
                if isinstance(value, types):
                    return fix(value)
            return value

        return union


def _full_name(schema: Mapping[str, Any], namespace: str | None) -> str:
    """A named type's full name (Avro's rule: a dotted name is full; else the schema's or the enclosing
    namespace)."""
    name = str(schema.get("name", ""))
    space = schema.get("namespace", namespace)
    return name if "." in name or not space else f"{space}.{name}"


def _python_types(schema: Any, named: Mapping[str, Any], namespace: str | None) -> tuple[type, ...]:
    """The Python types fastavro returns for a union branch (to pick the branch of a decoded value)."""
    if isinstance(schema, Mapping):
        if schema.get("logicalType") in _FASTAVRO_LOGICAL:
            return (object,)
        return _python_types(schema.get("type"), named, namespace)
    if isinstance(schema, str) and schema not in _PYTHON_TYPES:
        found = named.get(schema) or named.get(f"{namespace}.{schema}")
        return (object,) if found is None else _python_types(found, named, namespace)
    return _PYTHON_TYPES.get(schema, (object,)) if isinstance(schema, str) else (object,)


def _record(fields: list[tuple[str, Fix]]) -> Fix | None:
    if not fields:
        return None

    def record(value: Any) -> Any:
        for name, fix in fields:
            item = value.get(name)
            if item is not None:
                value[name] = fix(item)
        return value

    return record


def _each(fix: Fix | None) -> Fix | None:
    return None if fix is None else lambda items: [None if item is None else fix(item) for item in items]


def _values(fix: Fix | None) -> Fix | None:
    return None if fix is None else lambda entries: {k: None if v is None else fix(v) for k, v in entries.items()}
