"""Against the real Kafka and Redis the session fixture starts (tests/conftest.py), through the
public interfaces: MLLP sockets, HTTP, files, Kafka consumers."""
