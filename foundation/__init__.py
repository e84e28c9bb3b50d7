"""The ground floor every part of carebus stands on: configuration, the durable Kafka producer,
Redis connections, API authentication, log privacy, the clock, MLLP framing and the embedded
broker's TLS material. It imports nothing from producers/, streams/, consumers/ or carebus/
(the operational shell on top: CLI, embedded servers, demo)."""
