"""Consumers of the bus: subscriptions and push delivery, audit replay, monitoring and the dashboard."""
