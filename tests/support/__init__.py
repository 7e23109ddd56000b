"""Helpers shared by the integration and fault tests (real Kafka, PostgreSQL and Ray; no mocks)."""
