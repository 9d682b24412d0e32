"""Keeping the worker's metric index current without a restart.

Polling, not LISTEN/NOTIFY: reading the one-row revision every couple of
seconds costs nothing, survives reconnects and connection poolers in
transaction mode (which drop LISTEN), and cannot miss a change made while
the worker was disconnected. The revision moves in commit order
(tally.store.definitions), so a poll never passes a change still to commit.

A definition this process cannot run (its zone is missing from this host's
zone data, or it does not validate or compile) is refused: left out of the
index, logged once and listed in `refused`, while the others run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import asyncpg

from tally.contracts.metric import UsageMetric
from tally.core.engine import Core, new_core
from tally.core.metrics import MetricIndex, is_external, native_spec
from tally.core.periods import zone
from tally.errors import is_transient
from tally.store.definitions import Refused, load_definitions, revision
from tally.store.pool import DATABASE_ERRORS
from tally.telemetry.logs import Log

if TYPE_CHECKING:
    from tally.telemetry.instruments import Telemetry
    from tally.worker.partition import Partitions

log = Log("tally.definitions")

# Longest a poll may wait on PostgreSQL; then it counts as a transient failure.
POLL_TIMEOUT = 30.0


def runnable(metrics: Iterable[UsageMetric]) -> tuple[list[UsageMetric], list[Refused]]:
    """The live metrics a worker runs, and those it refuses (its zone unknown
    here, or it does not compile); `tally explain` judges metrics by this too."""
    runs: list[UsageMetric] = []
    refused: list[Refused] = []
    for metric in metrics:
        if metric.deleted_at is not None or is_external(metric):
            continue  # an EXTERNAL metric's values come from the API, never a worker
        try:
            zone(metric.timezone)
        except ValueError as exc:
            refused.append(Refused(metric.uid, "unknown_timezone", str(exc)))
            continue
        try:
            new_core().set_metrics([native_spec(metric)])
        except Exception as exc:  # any reason at all: one metric, not the worker
            refused.append(Refused(metric.uid, "cannot_compile", f"{type(exc).__name__}: {exc}"))
            continue
        runs.append(metric)
    return runs, refused


class DefinitionWatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        on_change: Callable[[MetricIndex], None],
        clock: Callable[[], float] = time.time,
        *,
        on_refused: Callable[[Sequence[Refused]], None] | None = None,
    ) -> None:
        self.pool = pool
        self.on_change = on_change
        self.on_refused = on_refused  # after each change, with the refused then
        self.clock = clock
        self.seen: int | None = None
        # The live definitions left out of the current index, and why.
        self.refused: tuple[Refused, ...] = ()
        # Wall time of the last poll that reached PostgreSQL (None before the first).
        self.last_refresh: float | None = None

    def age(self) -> float | None:
        """Seconds since the last successful poll; None before the first."""
        return None if self.last_refresh is None else self.clock() - self.last_refresh

    async def refresh(self) -> bool:
        """Reload if anything changed; True if the index was replaced."""
        async with asyncio.timeout(POLL_TIMEOUT), self.pool.acquire() as connection:
            current = await revision(connection)
            if current == self.seen:
                self.last_refresh = self.clock()
                return False
            loaded = await load_definitions(connection)
        runnable, refused = self._runnable(loaded.metrics)
        index = MetricIndex(runnable)
        self._report([*loaded.refused, *refused])  # before on_change, which may read it
        self.on_change(index)
        if self.on_refused is not None:
            self.on_refused(self.refused)
        first = self.seen is None
        self.seen = loaded.revision
        self.last_refresh = self.clock()
        log.info(
            "definitions loaded" if first else "definitions changed",
            live=len(index),
            refused=len(self.refused),
            revision=loaded.revision,
        )
        return True

    def _runnable(self, metrics: Iterable[UsageMetric]) -> tuple[list[UsageMetric], list[Refused]]:
        return runnable(metrics)

    def _report(self, refused: list[Refused]) -> None:
        before = set(self.refused)
        for item in refused:
            if item not in before:
                log.warning(
                    "metric refused; it does not run on this worker",
                    uid=item.uid,
                    reason=item.reason,
                    detail=item.detail,
                )
        self.refused = tuple(sorted(refused, key=lambda r: r.uid))

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds until `stop` is set.

        Transient database errors are logged and retried at the next poll
        (`last_refresh` then grows old); anything else ends `run` with the
        error, for the caller to stop on."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                break
            try:
                await self.refresh()
            except DATABASE_ERRORS as exc:
                if not is_transient(exc):
                    log.error("definitions watcher stopped", reason=f"{type(exc).__name__}: {exc}")
                    raise
                log.warning("definitions not refreshed", reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                log.error("definitions watcher stopped", reason=f"{type(exc).__name__}: {exc}")
                raise


class LiveMetrics:
    """The metric index a worker runs and the core compiled from it; the
    watcher's `on_change` and `on_refused` keep both current."""

    def __init__(self, core: Core, states: Partitions, telemetry: Telemetry) -> None:
        self.core = core
        self.states = states
        self.telemetry = telemetry
        self.index = MetricIndex([])

    def changed(self, index: MetricIndex) -> None:
        added = index.by_uid.keys() - self.index.by_uid.keys()
        self.index = index
        self.core.set_metrics(index.specs)
        if added:  # they start at each partition's next record (docs/backfill.md)
            for state in self.states.values():
                if state.ready:
                    state.metrics_added(sorted(added))
        self.telemetry.metrics_defined.set(len(index))

    def refused(self, refused: Sequence[Refused]) -> None:
        gauge = self.telemetry.metrics_refused
        gauge.clear()
        for item in refused:
            gauge.labels(item.uid, item.reason).set(1)
