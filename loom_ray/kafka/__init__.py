"""Kafka clients: the partition-assigned consumer and the admin helpers (partitions, watermarks)."""
