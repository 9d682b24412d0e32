"""`tally backfill`: a new metric over the events still in Kafka, exactly once (docs/backfill.md)."""
