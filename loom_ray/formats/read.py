"""A routed record's value (and, for a Debezium delete without a before image, its key) as the JSON values a
route reads, whatever the topic's format: the consumer's step between a Kafka record and
:mod:`loom_ray.routes.convert`.
"""

from __future__ import annotations

from typing import Any

import orjson

from loom_ray.decode import Rejection, decode_document, size_rejection
from loom_ray.formats import debezium
from loom_ray.formats.base import Codec


def route_document(codec: Codec | None, value: bytes, max_bytes: int) -> Any:
    """The value as JSON values, or the :class:`Rejection` saying why it has none. Format json (``codec``
    None) parses it (:func:`loom_ray.decode.decode_document`); a registry format decodes it. Raises
    :class:`~loom_ray.formats.base.SchemaNotReady`."""
    if codec is None:
        return decode_document(value, max_bytes)
    found = size_rejection(value, max_bytes) or codec.document(value)
    return found if isinstance(found, Rejection) else found[0]


def key_document(codec: Codec | None, key: bytes) -> Any:
    """A Debezium key (``{"id": 7}``, or its Connect envelope) as JSON values, or None when it does not decode.
    Raises :class:`~loom_ray.formats.base.SchemaNotReady` for a key in a registry format whose schema is not
    fetched yet."""
    if codec is None:
        try:
            document = orjson.loads(key)
        except orjson.JSONDecodeError:
            return None
    else:
        found = codec.document(key)
        if isinstance(found, Rejection):
            return None
        document = found[0]
    try:
        return debezium.unwrap(document)
    except (ValueError, TypeError):
        return None
