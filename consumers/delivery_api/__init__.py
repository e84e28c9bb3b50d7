"""The delivery service's HTTP API, one router per concern (consumers/delivery_service.py mounts
them): subscriptions, records, reviews, audit, the FHIR read API, monitoring and the dashboard."""
