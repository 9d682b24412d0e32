"""A backfill's Prometheus series (docs/backfill.md, "Progress")."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BackfillTelemetry:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.read = Gauge(
            "tally_backfill_records_done",
            "Records of the backfill's range counted (durable)",
            ["metric_uid"],
            registry=registry,
        )
        self.total = Gauge(
            "tally_backfill_records_total",
            "Records in the backfill's range",
            ["metric_uid"],
            registry=registry,
        )
        self.rate = Gauge(
            "tally_backfill_records_per_second",
            "Records of the range counted per second, this run",
            ["metric_uid"],
            registry=registry,
        )
        self.events_rate = Gauge(
            "tally_backfill_events_per_second",
            "Events applied to the metric per second, this run (durable)",
            ["metric_uid"],
            registry=registry,
        )
        self.eta = Gauge(
            "tally_backfill_eta_seconds",
            "Seconds left at the current rate (NaN: unknown)",
            ["metric_uid"],
            registry=registry,
        )
        self.flushes = Counter(
            "tally_backfill_flushes",
            "Backfill flush transactions committed",
            ["metric_uid"],
            registry=registry,
        )
