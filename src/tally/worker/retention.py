"""The retention task a worker runs in the background (`tally.store.retention`).

Every `retention_interval` (10 min by default) it takes a connection from the
worker's pool and runs one pass, which only one process of the fleet does at
a time (the others find the advisory lock held and skip). It never touches
the flush path: it has its own connection, deletes in short batches with a
pause between them, and waits on no lock a flush holds.

A database error ends the pass, is logged and counted, and the next pass
comes at the next interval; rows already deleted stay deleted, and the rest
are found again. Any other exception is a bug and ends `run` with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from tally.config import Settings
from tally.store.pool import DATABASE_ERRORS
from tally.store.retention import PassReport, Policy, run_pass
from tally.telemetry.logs import Log

log = Log("tally.retention")

ACQUIRE_TIMEOUT_SECONDS = 10.0


class RetentionTelemetry:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter(
            "tally_retention_passes",
            "Retention passes, by outcome (ok, skipped: another process held the lock, error).",
            ["outcome"],
            registry=registry,
        )
        self.deleted = Counter(
            "tally_retention_rows_deleted",
            "Rows deleted by retention, by table (unique_members, dedup_segments).",
            ["table"],
            registry=registry,
        )
        self.last_success = Gauge(
            "tally_retention_last_pass_timestamp_seconds",
            "When this process last finished a retention pass (POSIX).",
            registry=registry,
        )
        self.last_duration = Gauge(
            "tally_retention_last_pass_duration_seconds",
            "How long this process's last finished retention pass took.",
            registry=registry,
        )
        for outcome in ("ok", "skipped", "error"):
            self.passes.labels(outcome)
        for table in ("unique_members", "dedup_segments"):
            self.deleted.labels(table)


class RetentionTask:
    """`await task.run(stop)` until `stop` is set; `run_once()` for one pass."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        wall: Callable[[], float] = time.time,
        first_delay: float | None = None,
    ) -> None:
        self.pool = pool
        self.policy = Policy.from_settings(settings)
        self.interval = settings.retention_interval
        # Not at once: a worker starting up loads its partitions first.
        self.first_delay = min(60.0, self.interval) if first_delay is None else first_delay
        self.wall = wall
        self.telemetry = RetentionTelemetry(registry or CollectorRegistry())
        self.stop = asyncio.Event()

    async def run_once(self, *, dry_run: bool = False) -> PassReport:
        """One pass now; raises what the database raised."""

        async def pause() -> bool:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=self.policy.pause)
            return not self.stop.is_set()

        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as connection:
            report = await run_pass(
                connection, self.policy, self.wall(), dry_run=dry_run, between_batches=pause
            )
        if dry_run:
            return report
        t = self.telemetry
        if not report.ran:
            t.passes.labels("skipped").inc()
            log.debug("retention pass skipped: another process holds the retention lock")
            return report
        t.passes.labels("ok").inc()
        t.deleted.labels("unique_members").inc(report.members_total)
        t.deleted.labels("dedup_segments").inc(report.segments)
        t.last_success.set(self.wall())
        t.last_duration.set(report.seconds)
        if report.members_total or report.segments or not report.complete:
            log.info(
                "retention pass",
                members_deleted=report.members_total,
                segments_deleted=report.segments,
                batches=len(report.batches),
                seconds=round(report.seconds, 2),
                complete=report.complete,
            )
        return report

    @property
    def enabled(self) -> bool:
        """Whether `run` makes passes at all (an interval, and something to delete)."""
        return self.interval > 0 and (
            self.policy.member_retention > 0 or self.policy.dedup_window > 0
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Passes every `retention_interval` until `stop` is set (returns at
        once when not `enabled`). A pass under way ends at its next pause."""
        if not self.enabled:
            return
        self.stop = stop
        delay = self.first_delay
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return
            delay = self.interval
            try:
                await self.run_once()
            except DATABASE_ERRORS as exc:
                self.telemetry.passes.labels("error").inc()
                log.warning(
                    "retention pass failed; the next one is due after the interval",
                    reason=f"{type(exc).__name__}: {exc}",
                    retry_in=self.interval,
                )
