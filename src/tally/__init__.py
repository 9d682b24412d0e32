"""Tally: exact usage metering from Kafka events to PostgreSQL rollups."""

__version__ = "0.1.0"
