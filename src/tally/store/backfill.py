"""The tables of migration 0008: where workers started each metric, and backfills.

`tally.metric_starts` is written by the worker's flush (`tally.store.flush`);
this module reads it, and keeps a backfill's own rows: `tally.backfills` (one
per metric: its range and state) and `tally.backfill_partitions` (its
progress per partition, moved by compare-and-set like a worker's offsets).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tally.contracts.value import PartialRange
from tally.store.pool import Connection

RUNNING, DONE, CANCELLED = "running", "done", "cancelled"


async def started_metrics(connection: Connection, topic: str, partition: int) -> set[str]:
    """The metrics whose start offset is stored for this partition."""
    rows = await connection.fetch(
        "SELECT metric_uid FROM tally.metric_starts WHERE topic = $1 AND partition = $2",
        topic,
        partition,
    )
    return {r["metric_uid"] for r in rows}


async def metric_starts(connection: Connection, uid: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset from which live workers count `uid`."""
    rows = await connection.fetch(
        "SELECT topic, partition, start_offset FROM tally.metric_starts WHERE metric_uid = $1",
        uid,
    )
    return {(r["topic"], r["partition"]): r["start_offset"] for r in rows}


async def predates_starts(connection: Connection, uid: str) -> bool:
    """Whether `uid` existed when migration 0008 first ran (counted live
    before any start was recorded: a backfill refuses it)."""
    found = await connection.fetchval(
        "SELECT 1 FROM tally.metrics_before_starts WHERE metric_uid = $1", uid
    )
    return found is not None


@dataclass(frozen=True, slots=True)
class BackfillPartition:
    topic: str
    partition: int
    from_offset: int
    end_offset: int
    next_offset: int
    records: int = 0
    duplicates: int = 0

    @property
    def total(self) -> int:
        return max(0, self.end_offset - self.from_offset)

    @property
    def done(self) -> int:
        return max(0, min(self.next_offset, self.end_offset) - self.from_offset)


@dataclass(frozen=True, slots=True)
class Backfill:
    metric_uid: str
    state: str
    from_spec: str
    from_time: datetime | None
    owner: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    partitions: tuple[BackfillPartition, ...]
    last_error: str | None = None  # why its last run stopped short (migration 0010)
    last_error_at: datetime | None = None

    @property
    def total(self) -> int:
        return sum(p.total for p in self.partitions)

    @property
    def done(self) -> int:
        return sum(p.done for p in self.partitions)


def document(b: Backfill) -> dict[str, Any]:
    """A backfill as JSON (`GET /backfills`, `tally backfill status --format json`)."""
    return {
        "metricUid": b.metric_uid,
        "state": b.state,
        "from": b.from_spec,
        "recordsDone": b.done,
        "recordsTotal": b.total,
        "createdAt": b.created_at.isoformat(),
        "updatedAt": b.updated_at.isoformat(),
        "finishedAt": b.finished_at.isoformat() if b.finished_at else None,
        "lastError": b.last_error,
        "lastErrorAt": b.last_error_at.isoformat() if b.last_error_at else None,
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "fromOffset": p.from_offset,
                "endOffset": p.end_offset,
                "nextOffset": p.next_offset,
                "records": p.records,
                "duplicates": p.duplicates,
            }
            for p in b.partitions
        ],
    }


async def load_backfill(connection: Connection, uid: str) -> Backfill | None:
    found = await list_backfills(connection, uid)
    return found[0] if found else None


async def list_backfills(connection: Connection, uid: str | None = None) -> list[Backfill]:
    """Backfills (of one metric, or all) with their partitions, from one snapshot."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        heads = await connection.fetch(
            "SELECT * FROM tally.backfills WHERE $1::text IS NULL OR metric_uid = $1"
            " ORDER BY created_at, metric_uid",
            uid,
        )
        parts = await connection.fetch(
            "SELECT * FROM tally.backfill_partitions WHERE $1::text IS NULL OR metric_uid = $1"
            " ORDER BY topic, partition",
            uid,
        )
    by_uid: dict[str, list[BackfillPartition]] = {}
    for r in parts:
        by_uid.setdefault(r["metric_uid"], []).append(
            BackfillPartition(
                r["topic"],
                r["partition"],
                r["from_offset"],
                r["end_offset"],
                r["next_offset"],
                r["records_total"],
                r["duplicates_total"],
            )
        )
    return [
        Backfill(
            h["metric_uid"],
            h["state"],
            h["from_spec"],
            h["from_time"],
            h["owner"],
            h["created_at"],
            h["updated_at"],
            h["finished_at"],
            tuple(by_uid.get(h["metric_uid"], ())),
            h.get("last_error"),
            h.get("last_error_at"),
        )
        for h in heads
    ]


async def create_backfill(
    connection: Connection,
    uid: str,
    from_spec: str,
    from_time: datetime | None,
    partitions: Sequence[BackfillPartition],
    owner: str,
) -> bool:
    """Store a new backfill; False if one of this metric exists already."""
    async with connection.transaction():
        created = await connection.fetchval(
            "INSERT INTO tally.backfills (metric_uid, state, from_spec, from_time, owner)"
            " VALUES ($1, 'running', $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            uid,
            from_spec,
            from_time,
            owner,
        )
        if not created:
            return False
        await connection.executemany(
            "INSERT INTO tally.backfill_partitions"
            " (metric_uid, topic, partition, from_offset, end_offset, next_offset)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (uid, p.topic, p.partition, p.from_offset, p.end_offset, p.next_offset)
                for p in partitions
            ],
        )
    return True


class Cancelled(Exception):
    """The backfill is no longer running (cancelled): nothing was written."""


class Moved(Exception):
    """Another process moved this backfill's progress: nothing was written."""

    def __init__(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.partitions = list(partitions)
        super().__init__(
            "another process moved the progress of "
            + ", ".join(f"{t}[{p}]" for t, p in self.partitions)
        )


@dataclass(frozen=True, slots=True)
class ProgressStep:
    topic: str
    partition: int
    expected: int
    target: int
    records: int
    duplicates: int


_CLAIM = """
UPDATE tally.backfills SET updated_at = now(), owner = $2
 WHERE metric_uid = $1 AND state = 'running' RETURNING 1
"""

_MOVE = """
UPDATE tally.backfill_partitions AS b
   SET next_offset = c.target, owner = $2, flushed_at = now(),
       records_total = b.records_total + c.records,
       duplicates_total = b.duplicates_total + c.duplicates
  FROM unnest($3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
       AS c(topic, partition, expected, target, records, duplicates)
 WHERE b.metric_uid = $1 AND b.topic = c.topic AND b.partition = c.partition
   AND b.next_offset = c.expected
RETURNING b.topic, b.partition
"""


async def claim_and_move(
    connection: Connection, uid: str, owner: str, steps: Sequence[ProgressStep]
) -> None:
    """Inside the caller's transaction: lock the running backfill (a cancel
    waits for this transaction, or this one sees the cancel) and move its
    progress by compare-and-set. Raises `Cancelled` or `Moved`."""
    if not await connection.fetchval(_CLAIM, uid, owner):
        raise Cancelled(uid)
    if not steps:
        return
    steps = sorted(steps, key=lambda s: (s.topic, s.partition))
    moved = await connection.fetch(
        _MOVE,
        uid,
        owner,
        [s.topic for s in steps],
        [s.partition for s in steps],
        [s.expected for s in steps],
        [s.target for s in steps],
        [s.records for s in steps],
        [s.duplicates for s in steps],
    )
    if len(moved) != len(steps):
        kept = {(r["topic"], r["partition"]) for r in moved}
        raise Moved([(s.topic, s.partition) for s in steps if (s.topic, s.partition) not in kept])
    # Progress moved: an error a run stored earlier (a loser of a race, say)
    # no longer describes this backfill, which reads on.
    await connection.execute(_CLEAR_ERROR, uid)


_CLEAR_ERROR = (
    "UPDATE tally.backfills SET last_error = NULL, last_error_at = NULL"
    " WHERE metric_uid = $1 AND last_error IS NOT NULL"
)


async def finish(connection: Connection, uid: str, owner: str) -> bool:
    """Mark a running backfill done, clearing any error a run stored; False
    if it was not running."""
    return bool(
        await connection.fetchval(
            "UPDATE tally.backfills SET state = 'done', finished_at = now(), updated_at = now(),"
            " owner = $2, last_error = NULL, last_error_at = NULL"
            " WHERE metric_uid = $1 AND state = 'running' RETURNING 1",
            uid,
            owner,
        )
    )


async def record_error(connection: Connection, uid: str, message: str | None) -> None:
    """Store why this backfill's run stopped short (None: clear it, a run is
    reading again). The API shows it, so a refusal found by a process the API
    started is not only in that process's output. A backfill no longer
    running (done, cancelled) keeps none: a loser of a race ending after the
    winner finished does not mark it."""
    await connection.execute(
        "UPDATE tally.backfills SET last_error = $2,"
        " last_error_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END"
        " WHERE metric_uid = $1 AND (state = 'running' OR $2::text IS NULL)",
        uid,
        message,
    )


async def cancel(connection: Connection, uid: str) -> str | None:
    """Cancel a running backfill. Returns the state it is in afterwards
    (None: no backfill of this metric)."""
    state: str | None = await connection.fetchval(
        "UPDATE tally.backfills SET state = 'cancelled', finished_at = now(), updated_at = now()"
        " WHERE metric_uid = $1 AND state = 'running' RETURNING state",
        uid,
    )
    if state is None:
        state = await connection.fetchval(
            "SELECT state FROM tally.backfills WHERE metric_uid = $1", uid
        )
    return state


async def partial_ranges(connection: Connection, uids: Iterable[str]) -> dict[str, PartialRange]:
    """Of `uids`, those whose values cover only part of their range (a
    cancelled backfill, or one still running: killed and never resumed, it
    stays so), with the marker the values carry (docs/backfill.md)."""
    wanted = sorted(set(uids))
    if not wanted:
        return {}
    rows = await connection.fetch(
        "SELECT b.metric_uid, b.state, b.from_spec, b.finished_at,"
        " coalesce(sum(greatest(0, least(p.next_offset, p.end_offset) - p.from_offset)), 0) AS done,"
        " coalesce(sum(greatest(0, p.end_offset - p.from_offset)), 0) AS total"
        " FROM tally.backfills AS b LEFT JOIN tally.backfill_partitions AS p USING (metric_uid)"
        " WHERE b.state IN ('cancelled', 'running') AND b.metric_uid = ANY($1::text[])"
        " GROUP BY b.metric_uid, b.state, b.from_spec, b.finished_at",
        wanted,
    )
    return {
        r["metric_uid"]: PartialRange(
            reason="backfill_cancelled" if r["state"] == CANCELLED else "backfill_running",
            backfill_from=r["from_spec"],
            records_done=int(r["done"]),
            records_total=int(r["total"]),
            cancelled_at=r["finished_at"],
        )
        for r in rows
    }
