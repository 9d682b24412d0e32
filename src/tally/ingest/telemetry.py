"""Prometheus counters of POST /events, on a registry passed in (a fresh one per test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from tally.core.events import RejectReason


class IngestTelemetry:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.accepted = Counter(
            "tally_ingest_events_accepted",
            "Events taken over HTTP and acknowledged by Kafka.",
            registry=registry,
        )
        self.rejected = Counter(
            "tally_ingest_events_rejected",
            "Events refused over HTTP by the worker's decoder (or as CloudEvents), by reason.",
            ["reason"],
            registry=registry,
        )
        self.unacknowledged = Counter(
            "tally_ingest_events_unacknowledged",
            "Valid events Kafka did not acknowledge (the request answered 503).",
            registry=registry,
        )
        self.requests = Counter(
            "tally_ingest_requests",
            "POST /events requests, by status code.",
            ["status"],
            registry=registry,
        )
        # Series that exist from the start at 0, so rate() sees their first increase.
        for reason in RejectReason:
            self.rejected.labels(reason.value)
        for status in ("202", "413", "415", "422", "503"):
            self.requests.labels(status)
