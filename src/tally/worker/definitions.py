"""Keeping the worker's metric index current without a restart.

Polling, not LISTEN/NOTIFY: `SELECT max(revision), count(*)` every couple of
seconds costs nothing, survives reconnects and connection poolers in
transaction mode (which drop LISTEN), and cannot miss a change made while
the worker was disconnected. A notification would save at most one
interval of latency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from tally.core.metrics import MetricIndex, PeriodCaches
from tally.store.definitions import list_metrics, revision
from tally.store.pool import DATABASE_ERRORS
from tally.telemetry.logs import Log

log = Log("tally.definitions")


class DefinitionWatcher:
    def __init__(self, pool: asyncpg.Pool, on_change: Callable[[MetricIndex], None]) -> None:
        self.pool = pool
        self.on_change = on_change
        self.seen: tuple[int, int] | None = None
        self.caches = PeriodCaches()  # shared across reloads: warm period caches

    async def refresh(self) -> bool:
        """Reload if anything changed; True if the index was replaced."""
        async with self.pool.acquire() as connection:
            current = await revision(connection)
            if current == self.seen:
                return False
            metrics = await list_metrics(connection)
        index = MetricIndex(metrics, self.caches)
        self.on_change(index)
        first = self.seen is None
        self.seen = current
        log.info(
            "definitions loaded" if first else "definitions changed",
            live=len(index),
            revision=current[0],
        )
        return True

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                break
            try:
                await self.refresh()
            except DATABASE_ERRORS as exc:
                log.warning("definitions not refreshed", reason=f"{type(exc).__name__}: {exc}")
