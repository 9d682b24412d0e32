"""Tally: exact usage metering from Kafka events to PostgreSQL rollups."""

from tally import zones as _zones

__version__ = "0.1.0"

# Before anything builds a ZoneInfo: zone data from the tzdata package only.
_zones.pin()
