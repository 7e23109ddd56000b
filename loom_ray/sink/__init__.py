"""Where batches go: PostgreSQL, in one transaction with their offsets."""
