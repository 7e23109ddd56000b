"""loom-ray: exactly-once Kafka to PostgreSQL ingestion on Ray.

The data path, by module: settings -> kafka -> decode -> batch -> sink (rows, dead letters and offsets in
one transaction) -> pipeline (one actor's loop) -> actors (Ray shells) -> main (the job's entry point).
"""

__version__ = "0.1.0"
