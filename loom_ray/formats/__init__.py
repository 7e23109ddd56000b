"""Record formats: how a topic's values are read before they become rows.

``json`` is read by :mod:`loom_ray.decode` (the default, and the fast path). ``avro``, ``protobuf`` and
``json_schema`` are the Confluent wire format (a zero byte, a 4-byte schema id, for Protobuf the message
indexes, then the payload): the schema comes from a Schema Registry by id, through confluent-kafka's own
client and deserializers (:mod:`~loom_ray.formats.registry`, :mod:`~loom_ray.formats.codecs`), and the
decoded record is stored as JSON exactly (:mod:`~loom_ray.formats.jsonify`). A Debezium change event's
envelope (:mod:`~loom_ray.formats.debezium`) is read for a route that says ``envelope = "debezium"``.
:mod:`~loom_ray.formats.names` is the only module the settings import: the others load the registry client.
"""
