"""The contract between producers, streams and consumers: Avro schemas and the topic catalogue."""
