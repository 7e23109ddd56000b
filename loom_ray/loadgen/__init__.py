"""Load generator: fill a Kafka topic with JSON events and seeded malformed messages.

Run ``python -m loom_ray.loadgen --help``. Message ``seq`` (0 .. N-1) has key ``str(seq)`` and goes to
partition ``seq % P``, so every partition gets an even share. A seeded, reproducible fraction of messages
is malformed (see ``MALFORMED_KINDS``); ``plan()`` says which ones.

With ``--ack-log FILE`` every acknowledged message becomes one line ``partition offset kind sha256``, where
kind is ``valid`` or a malformed kind and sha256 is the hex digest of the value as produced (``-`` for a
tombstone, whose value is null).
"""

from loom_ray.loadgen.cli import DEFAULT_BOOTSTRAP, main
from loom_ray.loadgen.topic import LoadgenError, ensure_topic
from loom_ray.loadgen.values import DEFAULT_OVERSIZE_BYTES, MALFORMED_KINDS, malformed_value, plan, valid_value

__all__ = (
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_OVERSIZE_BYTES",
    "MALFORMED_KINDS",
    "LoadgenError",
    "ensure_topic",
    "main",
    "malformed_value",
    "plan",
    "valid_value",
)
