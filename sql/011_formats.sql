-- Record formats (LOOM_FORMATS): a record of a registry format (avro, protobuf, json_schema) is stored in
-- loom_messages decoded to JSON, with the Schema Registry id of the schema it was written with; NULL for a
-- json record. Confluent's ids are unsigned 32-bit, so bigint.
ALTER TABLE loom_messages ADD COLUMN IF NOT EXISTS schema_id bigint;
