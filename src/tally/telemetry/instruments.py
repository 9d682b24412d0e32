"""The worker's Prometheus instruments, on a registry passed in (a fresh one per test).

Names follow Prometheus conventions: `tally_` prefix, base units (seconds,
bytes), `_total` for counters. Event outcomes (applied, duplicate, dead
lettered, skipped, unmatched) are counted when the flush that makes them
durable commits, so they agree with the values table; `consumed` counts
reads, so it also counts events read again after a crash or a rebalance.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tally.core.events import RejectReason
from tally.errors import component_of


class Telemetry:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumed = Counter(
            "tally_events_consumed",
            "Messages read from Kafka.",
            ["topic", "partition"],
            registry=registry,
        )
        self.applied = Counter(
            "tally_events_applied",
            "Events applied to a metric's rollups (committed).",
            ["metric"],
            registry=registry,
        )
        self.duplicates = Counter(
            "tally_events_duplicate",
            "Events dropped as repeats of an id inside the dedup window.",
            ["topic"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "tally_events_dead_lettered",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dead_letters_parked = Counter(
            "tally_dead_letters_parked",
            "Dead letters Kafka would not take, written to tally.parked_dead_letters instead.",
            ["reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "tally_events_skipped",
            "Events that matched a metric but carried no usable value, by reason.",
            ["metric", "reason"],
            registry=registry,
        )
        self.unmatched = Counter(
            "tally_events_unmatched", "Valid events that no live metric took.", registry=registry
        )
        self.flushes = Counter(
            "tally_flushes",
            "Flush transactions, by outcome (ok, fenced, error).",
            ["outcome"],
            registry=registry,
        )
        self.flush_duration = Histogram(
            "tally_flush_duration_seconds",
            "Time of one flush, database transaction included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.flush_rows = Histogram(
            "tally_flush_rows",
            "Rollup rows written by one flush.",
            buckets=(1, 10, 100, 1000, 10_000, 100_000, 1_000_000),
            registry=registry,
        )
        self.rows_written = Counter(
            "tally_rollup_rows_written", "Rollup row upserts committed.", registry=registry
        )
        self.members_sent = Counter(
            "tally_members_sent",
            "UNIQUE members committed flushes sent to PostgreSQL.",
            registry=registry,
        )
        self.members_skipped = Counter(
            "tally_members_skipped",
            "UNIQUE members committed flushes left out: the member cache knew them stored.",
            registry=registry,
        )
        self.member_cache = Gauge(
            "tally_member_cache_members",
            "UNIQUE members the worker remembers as stored.",
            registry=registry,
        )
        self.lag = Gauge(
            "tally_consumer_lag_events",
            "Messages between the consumed position and the partition end.",
            ["topic", "partition"],
            registry=registry,
        )
        self.pending_events = Gauge(
            "tally_pending_events", "Events consumed but not yet flushed.", registry=registry
        )
        self.pending_rollups = Gauge(
            "tally_pending_rollups", "Rollups changed but not yet flushed.", registry=registry
        )
        self.dedup_ids = Gauge(
            "tally_dedup_ids", "Event ids held in the dedup windows.", registry=registry
        )
        self.last_flush = Gauge(
            "tally_last_flush_timestamp_seconds",
            "When the last successful flush committed (POSIX).",
            registry=registry,
        )
        self.rebalances = Counter(
            "tally_rebalances", "Partition assignments received.", registry=registry
        )
        self.partitions = Gauge(
            "tally_partitions_assigned", "Partitions this worker owns.", registry=registry
        )
        self.fenced = Counter(
            "tally_partitions_fenced",
            "Times a flush found another worker had moved a partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.errors = Counter(
            "tally_errors",
            "Errors talking to the parts around the worker, by component and kind.",
            ["component", "kind"],
            registry=registry,
        )
        self.permanent_errors = Counter(
            "tally_permanent_errors",
            "Errors retrying could not mend; the worker stopped on each (see its log).",
            registry=registry,
        )
        self.stopping = Gauge(
            "tally_stopping",
            "1 while the worker is stopping on a permanent error (reason in the label).",
            ["component", "kind"],
            registry=registry,
        )
        self.offset_gaps = Counter(
            "tally_offset_gaps",
            "Records a partition's stored position could not be continued from: deleted by "
            "retention before they were read (kind=retention), or a log reset under the "
            "stored position (kind=reset: topic recreated or truncated).",
            ["topic", "partition", "kind"],
            registry=registry,
        )
        self.metrics_refused = Gauge(
            "tally_metrics_refused",
            "Live metric definitions this worker cannot run (e.g. a zone its data lacks).",
            ["metric", "reason"],
            registry=registry,
        )
        self.zone_data = Gauge(
            "tally_zone_data_info",
            "The IANA tz release in use (from the tzdata package), as the version label.",
            ["version"],
            registry=registry,
        )
        self.metrics_defined = Gauge(
            "tally_metrics_live", "Live (not deleted) metric definitions.", registry=registry
        )
        self.up_since = Gauge(
            "tally_start_time_seconds", "When this worker started (POSIX).", registry=registry
        )
        # Series that exist from the start at 0, so rate() sees their first increase.
        self.permanent_errors.inc(0)
        for reason in RejectReason:
            self.dead_lettered.labels(reason.value)
        for outcome in ("ok", "fenced", "error"):
            self.flushes.labels(outcome)

    def count_error(self, exc: BaseException) -> None:
        """One error talking to the parts around the worker, by component and class."""
        self.errors.labels(component_of(exc), type(exc).__name__).inc()
