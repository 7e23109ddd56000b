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
    """The in-place fix of records decoded with the Avro ``schema`` (parsed JSON), or None if none is needed.

    A recursive type (a record with a field of its own type, or of a type enclosing it) is walked twice: first
    with its recursive references fixing nothing, which tells whether anything needs fixing at all (a value
    below a reference is of a type already walked); if so, again with each reference fixing its value as its
    record does.
    """
    first = _Compiler(recursive=False)
    fix = first.compile(schema, None)
    return _Compiler(recursive=True).compile(schema, None) if fix is not None and first.recursed else fix


class _Compiler:
    """Walks a schema once; named types are remembered by full name for later references."""

    def __init__(self, recursive: bool) -> None:
        self._named: dict[str, Any] = {}
        self._open: dict[str, list[Fix | None]] = {}  # records being walked: the cell their fix goes in
        self._recursive = recursive
        self.recursed = False

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
        enclosing = self._open.get(full)
        if enclosing is not None:
            self.recursed = True
            return _reference(enclosing) if self._recursive else None
        self._named[full] = schema
        inner = full.rpartition(".")[0] or None
        cell: list[Fix | None] = [None]
        self._open[full] = cell
        try:
            fixes = [(f["name"], fix) for f in schema["fields"] if (fix := self.compile(f["type"], inner)) is not None]
        finally:
            del self._open[full]
        cell[0] = _record(fixes)
        return cell[0]

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


def _reference(cell: list[Fix | None]) -> Fix:
    """A recursive reference: the fix its record's walk leaves in ``cell``."""

    def reference(value: Any) -> Any:
        fix = cell[0]
        return value if fix is None else fix(value)

    return reference


def _each(fix: Fix | None) -> Fix | None:
    return None if fix is None else lambda items: [None if item is None else fix(item) for item in items]


def _values(fix: Fix | None) -> Fix | None:
    return None if fix is None else lambda entries: {k: None if v is None else fix(v) for k, v in entries.items()}
