"""Retention: delete the rows no flush and no query can need any more.

Two tables grow forever without it:

- `tally.unique_members`. A UNIQUE rollup's value in `tally.metric_values`
  already holds its member count; a period's members are needed only while
  the period can still receive late events (`max_lateness`) and by queries
  that union periods (rolling 30- and 90-day UNIQUE). A member is deleted
  once its period ended at least `member_retention` ago:
  `period_end <= now - member_retention`, with `period_end` the rollup's
  stored end in `tally.metric_values` (exclusive, in the metric's zone).
  Values are never touched. Configuration refuses a retention shorter than
  `max_lateness` + 1 day (`tally.config`), so no accepted event can belong
  to a period whose members are gone: its member would be inserted again
  and counted twice.
- `tally.dedup_segments`. Each flush expires its own partitions' old hours,
  so the segments of a partition that no longer gets events stayed forever.
  A pass deletes, for every partition, the hours a flush would expire
  (`bucket < (now - dedup_window) // 3600`, as `DedupWindow` computes it)
  minus `SEGMENT_GRACE_BUCKETS`, so a live owner whose clock runs up to an
  hour behind this one's never loses a bucket it still uses.

A pass holds a session advisory lock (`LOCK_KEY`), so one process of the
fleet does it while the others skip. It deletes in batches: each batch is
one short transaction that deletes at most `batch_size` rows, only rows it
could lock without waiting (`FOR UPDATE SKIP LOCKED`). A pass never waits
on a flush's row locks, so it can neither deadlock with a flush nor hold one
up for longer than one batch; rows it skipped are deleted by the next pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tally.config import Settings
from tally.core.dedup import BUCKET_SECONDS
from tally.store.pool import Connection

# Any fixed 64-bit number, the same for every Tally process
# (migrations hold ...0001, value adjustments ...0002).
LOCK_KEY = 0x7A11_7A11_0000_0003

SEGMENT_GRACE_BUCKETS = 1

# The shortest a period of each unit can be, rounded down: a day loses at
# most a DST jump (23 h; Antarctica/Troll's 2 h jump gives 22 h), February
# is 28 days. A pass looks only at periods starting before `cutoff - shortest`,
# the only ones that can have ended by then, so a unit's periods still
# running (this year's, for `year`) are not looked at. A period shorter than
# this (a zone moving by a whole day) is deleted that much later, never
# earlier: the decision is by the stored period_end.
SHORTEST_PERIOD_SECONDS = {
    "hour": 0,
    "day": 21 * 3600,
    "week": 7 * 86400 - 3 * 3600,
    "month": 28 * 86400 - 3 * 3600,
    "quarter": 90 * 86400 - 3 * 3600,
    "year": 365 * 86400 - 3 * 3600,
}

STATEMENT_TIMEOUT_SECONDS = 60.0

# Per batch transaction: never wait long for a lock or a statement; plan
# each statement for its own parameters (a generic plan could scan the
# table); and commit without waiting for the WAL to reach disk: a batch
# lost in a crash is found and deleted again by the next pass.
_LIMITS = (
    "SELECT set_config('lock_timeout', '5s', true),"
    f" set_config('statement_timeout', '{int(STATEMENT_TIMEOUT_SECONDS * 1000)}', true),"
    " set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('synchronous_commit', 'off', true)"
)

# The next period of a metric (in unique_members_period order) after the
# cursor ($3, $4), starting before $2: one probe of the index.
_NEXT_PERIOD = """
SELECT period_start, metric_uid FROM tally.unique_members
 WHERE time_unit = $1 AND period_start < to_timestamp($2)
   AND (period_start, metric_uid) > ($3::timestamptz, $4::text)
 ORDER BY period_start, metric_uid
 LIMIT 1
"""

# Whether that period has ended by the cutoff $4. Every rollup of one metric,
# unit and period start has the same end (the metric's zone is immutable),
# so any one rollup with members tells it. NULL: no value row (never deleted).
_ENDED = """
SELECT v.period_end <= to_timestamp($4)
  FROM tally.unique_members AS m
  JOIN tally.metric_values AS v
 USING (metric_uid, customer_id, time_unit, period_start, group_key)
 WHERE m.time_unit = $1 AND m.period_start = $2 AND m.metric_uid = $3
 LIMIT 1
"""

# The members of that period whose rollup ended by $4 (checked again per
# rollup, so the rule holds row by row whatever the period probe assumed).
_PERIOD_MEMBERS = """
  FROM tally.unique_members AS m
 WHERE m.time_unit = $1 AND m.period_start = $2 AND m.metric_uid = $3
   AND EXISTS (SELECT 1 FROM tally.metric_values AS v
                WHERE v.metric_uid = m.metric_uid AND v.customer_id = m.customer_id
                  AND v.time_unit = m.time_unit AND v.period_start = m.period_start
                  AND v.group_key = m.group_key AND v.period_end <= to_timestamp($4))
"""

# ctid = ANY(ARRAY(...)) is a TID scan: the rows found and locked by the
# sub-select are deleted where they are, without a second index lookup.
_DELETE_MEMBERS = f"""
DELETE FROM tally.unique_members
 WHERE ctid = ANY(ARRAY(SELECT m.ctid {_PERIOD_MEMBERS} LIMIT $5 FOR UPDATE OF m SKIP LOCKED))
"""

_COUNT_MEMBERS = f"SELECT count(*) {_PERIOD_MEMBERS}"

_DELETE_SEGMENTS = """
DELETE FROM tally.dedup_segments
 WHERE ctid = ANY(ARRAY(SELECT ctid FROM tally.dedup_segments WHERE bucket < $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED))
"""

_COUNT_SEGMENTS = "SELECT count(*) FROM tally.dedup_segments WHERE bucket < $1"

_BEFORE_ALL = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a pass deletes and how gently."""

    member_retention: float  # seconds; 0 keeps members forever
    dedup_window: float  # seconds; 0 (dedup off here) leaves segments alone
    batch_size: int = 10_000
    pause: float = 0.5  # seconds between two batches

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            member_retention=settings.member_retention,
            dedup_window=settings.dedup_window,
            batch_size=settings.retention_batch_size,
            pause=settings.retention_pause,
        )

    def member_cutoff(self, now: float) -> float | None:
        """Members of periods ending at or before this instant are deleted."""
        return now - self.member_retention if self.member_retention > 0 else None

    def segment_cutoff(self, now: float) -> int | None:
        """Dedup segments of hour buckets below this one are deleted."""
        if self.dedup_window <= 0:
            return None
        return int((now - self.dedup_window) // BUCKET_SECONDS) - SEGMENT_GRACE_BUCKETS


@dataclass(frozen=True, slots=True)
class Batch:
    """One delete transaction."""

    table: str  # "unique_members" or "dedup_segments"
    unit: str  # the time unit for members, "" for segments
    rows: int
    seconds: float


@dataclass(slots=True)
class PassReport:
    ran: bool  # False: another process held the lock, nothing was done
    dry_run: bool = False
    member_cutoff: float | None = None
    segment_cutoff: int | None = None
    members: dict[str, int] = field(default_factory=dict)  # deleted (or to delete) per unit
    segments: int = 0
    batches: list[Batch] = field(default_factory=list)  # those that deleted rows
    complete: bool = True  # False: stopped before everything due was deleted
    seconds: float = 0.0

    @property
    def members_total(self) -> int:
        return sum(self.members.values())


# Awaited after every `batch_size` rows deleted: pauses, and says whether to go on.
BetweenBatches = Callable[[], Awaitable[bool]]


async def try_lock(connection: Connection) -> bool:
    return bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY))


async def unlock(connection: Connection) -> None:
    await connection.fetchval("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def run_pass(
    connection: Connection,
    policy: Policy,
    now: float,
    *,
    dry_run: bool = False,
    between_batches: BetweenBatches | None = None,
) -> PassReport:
    """One pass over both tables, as of `now` (POSIX seconds).

    Returns with `ran=False` at once when another process holds the lock. A
    dry run takes no lock and only counts. `between_batches` is awaited after
    every `batch_size` rows deleted (default: sleep `policy.pause`); when it
    returns False the pass ends early, `complete=False`.
    """
    started = time.perf_counter()
    report = PassReport(
        ran=True,
        dry_run=dry_run,
        member_cutoff=policy.member_cutoff(now),
        segment_cutoff=policy.segment_cutoff(now),
    )
    if not dry_run and not await try_lock(connection):
        return PassReport(ran=False)
    deleter = _Deleter(connection, policy, report, between_batches or _sleeper(policy.pause))
    try:
        if report.member_cutoff is not None:
            for unit in SHORTEST_PERIOD_SECONDS:
                await deleter.members(unit, report.member_cutoff)
                if not report.complete:
                    break
        if report.complete and report.segment_cutoff is not None:
            await deleter.segments(report.segment_cutoff)
    finally:
        if not dry_run:
            await unlock(connection)
    report.seconds = time.perf_counter() - started
    return report


def _sleeper(seconds: float) -> BetweenBatches:
    async def pause() -> bool:
        await asyncio.sleep(seconds)
        return True

    return pause


class _Deleter:
    """The batches of one pass: each one transaction of at most `batch_size`
    rows; `between_batches` after every `batch_size` rows."""

    def __init__(
        self,
        connection: Connection,
        policy: Policy,
        report: PassReport,
        between_batches: BetweenBatches,
    ) -> None:
        self.connection = connection
        self.policy = policy
        self.report = report
        self.between_batches = between_batches
        self.since_pause = 0

    async def members(self, unit: str, cutoff: float) -> None:
        connection, report = self.connection, self.report
        before = cutoff - SHORTEST_PERIOD_SECONDS[unit]
        cursor: tuple[datetime, str] = (_BEFORE_ALL, "")
        while report.complete:
            period = await connection.fetchrow(
                _NEXT_PERIOD, unit, before, *cursor, timeout=STATEMENT_TIMEOUT_SECONDS
            )
            if period is None:
                return
            cursor = (period["period_start"], period["metric_uid"])
            key = (unit, *cursor)
            ended = await connection.fetchval(
                _ENDED, *key, cutoff, timeout=STATEMENT_TIMEOUT_SECONDS
            )
            if not ended:
                continue  # still running, or no value row to tell its end
            if report.dry_run:
                found = await connection.fetchval(
                    _COUNT_MEMBERS, *key, cutoff, timeout=STATEMENT_TIMEOUT_SECONDS * 10
                )
                report.members[unit] = report.members.get(unit, 0) + int(found)
                continue
            while report.complete:
                rows = await self._batch(_DELETE_MEMBERS, "unique_members", unit, *key, cutoff)
                report.members[unit] = report.members.get(unit, 0) + rows
                if rows < self.policy.batch_size:
                    break
        if report.members.get(unit) == 0:
            del report.members[unit]

    async def segments(self, before_bucket: int) -> None:
        report = self.report
        if report.dry_run:
            report.segments = int(
                await self.connection.fetchval(
                    _COUNT_SEGMENTS, before_bucket, timeout=STATEMENT_TIMEOUT_SECONDS
                )
            )
            return
        while report.complete:
            rows = await self._batch(_DELETE_SEGMENTS, "dedup_segments", "", before_bucket)
            report.segments += rows
            if rows < self.policy.batch_size:
                return

    async def _batch(self, sql: str, table: str, unit: str, *args: Any) -> int:
        connection, size = self.connection, self.policy.batch_size
        started = time.perf_counter()
        async with connection.transaction():
            await connection.execute(_LIMITS)
            status = await connection.execute(
                sql, *args, size, timeout=STATEMENT_TIMEOUT_SECONDS + 5
            )
        rows = int(status.rsplit(" ", 1)[-1])
        if rows:
            self.report.batches.append(Batch(table, unit, rows, time.perf_counter() - started))
        self.since_pause += rows
        if self.since_pause >= size:
            self.since_pause = 0
            if not await self.between_batches():
                self.report.complete = False
        return rows
