"""Routes that name a pydantic model (``model = "module:Class"``): its fields give the columns and the
validation.

Imported at start by the driver (where the routes file is read) and again by each consumer actor when it
builds the route's plan, so the module must be importable on every Ray worker (installed, or on
``PYTHONPATH``). A record's value is validated by the model (lax or strict, as the model says); a
``ValidationError`` becomes a dead letter naming the route, the field and pydantic's reason. The validated
model is dumped in JSON mode and its fields then go through the route's ordinary column conversions
(:mod:`loom_ray.routes.types`): a ``datetime`` without a time zone, for instance, is still refused.
"""

from __future__ import annotations

import datetime
import importlib
import types
import typing
import uuid
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

# Python annotation -> the column type a field of that annotation gets (bool before int: bool is an int).
_ANNOTATION_TYPES: tuple[tuple[Any, str], ...] = (
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double precision"),
    (Decimal, "numeric"),
    (str, "text"),
    (datetime.datetime, "timestamptz"),
    (datetime.date, "date"),
    (uuid.UUID, "uuid"),
    (dict, "jsonb"),
    (list, "jsonb"),
    (BaseModel, "jsonb"),
)


def load_model(spec: str) -> type[BaseModel]:
    """The class ``module:Class`` names; raises ValueError saying what to change."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f'model {spec!r}: write model = "package.module:ClassName"')
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"model {spec!r} cannot be imported ({type(exc).__name__}: {exc}); make its module importable "
            "(installed, or on PYTHONPATH) on the driver and on every Ray worker"
        ) from None
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise ValueError(f"model {spec!r} is not a pydantic model (a subclass of pydantic.BaseModel)")
    return found


def model_columns(spec: str) -> dict[str, dict[str, Any]]:
    """The columns of the model's fields, as ``[route.columns]`` would declare them (read from the value)."""
    model = load_model(spec)
    columns = {}
    for name, field in model.model_fields.items():
        annotation, optional = _unwrap(field.annotation)
        pg_type = next(
            (t for kind, t in _ANNOTATION_TYPES if isinstance(annotation, type) and issubclass(annotation, kind)),
            None,
        )
        if pg_type is None:
            raise ValueError(
                f"model {spec!r}: field {name} ({annotation}) has no column type; declare the column under "
                "[route.columns], which takes precedence over the model's fields"
            )
        columns[name] = {"type": pg_type, "required": field.is_required() and not optional}
    return columns


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``X`` of ``X | None`` / ``Optional[X]`` (and whether None was allowed), the origin of ``list[int]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _unwrap(members[0]) if len(members) == 1 else (None, True)
        return inner, True
    return (origin or annotation), False
