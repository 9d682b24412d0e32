"""The flush transaction: offsets, dedup, members and rollups, all or nothing.

The order of statements inside the transaction is fixed here (step 3 of
`tally.worker.checkpoint`, which holds the order of the steps around it):

1. compare-and-set each partition's stored offset (fencing, docs/design.md §3);
   if any partition's offset moved, nothing else is written; then where
   this flush's metrics started, for those it is the first to include
   (`tally.metric_starts`, docs/backfill.md);
2. dead letters Kafka would not take, parked (`tally.parked_dead_letters`);
3. the dedup window's new ids, merged and expired segments;
4. UNIQUE members, inserted in key order (the byte order of their
   primary key); only new ones add to a value
   (with a `MemberCache`, members this worker's committed flushes already
   stored are not sent again);
5. rollup deltas, upserted in primary-key byte order: COUNT, SUM and UNIQUE
   (`value = value + delta`) first, then MAX, MIN, AVG and LATEST, one
   statement each (GREATEST, LEAST, the exact sums and counts, the later
   (timestamp, id)). A row's kind never changes, so every worker locks rows
   in the same order, (statement, key), and concurrent flushes cannot
   deadlock on each other.

The caller commits Kafka's advisory offsets only after this returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

from tally.core.dedup import DedupWindow, FlushPlan
from tally.core.engine import Deltas, member_copy
from tally.store.flush_part import FlushPart as FlushPart  # re-exported
from tally.store.flush_part import PartitionFlush as PartitionFlush
from tally.store.member_cache import MemberCache, MemberOffer, MemberRollup, offer_all
from tally.store.member_cache import MemberColumns as MemberColumns  # re-exported
from tally.store.member_cache import MemberKey as MemberKey
from tally.store.pool import Connection

_CAS = """
UPDATE tally.partition_offsets AS o
   SET next_offset = c.next_offset, owner = $5, flushed_at = now(), epoch = o.epoch + 1,
       records_total = o.records_total + c.records,
       duplicates_total = o.duplicates_total + c.duplicates,
       dead_letters_total = o.dead_letters_total + c.dead_letters
  FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
              $9::bigint[])
       AS c(topic, partition, expected, next_offset, records, duplicates, dead_letters, epoch)
 WHERE o.topic = c.topic AND o.partition = c.partition AND o.next_offset = c.expected
   AND (c.epoch IS NULL OR o.epoch = c.epoch)
RETURNING o.topic, o.partition, o.epoch
"""

_STARTS = """
INSERT INTO tally.metric_starts (metric_uid, topic, partition, start_offset, owner)
SELECT s.metric_uid, s.topic, s.partition, s.start_offset, $5
  FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS s(metric_uid, topic, partition, start_offset)
 ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING
"""

_PARK = """
INSERT INTO tally.parked_dead_letters
       (topic, partition, "offset", reason, detail, send_error, record_key, record_value,
        header_names, header_values, record_timestamp)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""

_INSERT_SEGMENT = """
INSERT INTO tally.dedup_segments (topic, partition, bucket, id_count, ids)
VALUES ($1, $2, $3, $4, $5) RETURNING segment_id
"""

_DELETE_SEGMENTS = """
DELETE FROM tally.dedup_segments WHERE topic = $1 AND partition = $2 AND segment_id = ANY($3::bigint[])
"""

_EXPIRE_SEGMENTS = """
DELETE FROM tally.dedup_segments WHERE topic = $1 AND partition = $2 AND bucket < $3
"""

# Rows go to PostgreSQL as text and int8 (POSIX seconds), much cheaper to
# encode than numeric and timestamptz; PostgreSQL converts them. They are
# staged by binary COPY into TEMP tables (created once per session, emptied
# at every commit), and the native core writes the COPY payloads itself
# (`Deltas.value_copy`, `kind_copy`, `member_copy`): no Python list or
# driver encoding per value (docs/performance.md, "Write path"). A session
# that may not create TEMP tables sends unnest arrays instead.
_STAGED = """
SELECT has_database_privilege(current_database(), 'TEMPORARY') AS allowed,
       to_regclass('pg_temp.tally_flush_members') IS NOT NULL
       AND to_regclass('pg_temp.tally_flush_values') IS NOT NULL
       AND to_regclass('pg_temp.tally_flush_kinds') IS NOT NULL AS ready
"""

_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS tally_flush_members (
    metric_uid text, customer_id text, time_unit text, period_start int8, group_key text, member text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tally_flush_values (
    metric_uid text, customer_id text, group_key text, time_unit text,
    period_start int8, period_end int8, value text, event_count int8
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tally_flush_kinds (
    merge text, metric_uid text, customer_id text, group_key text, time_unit text,
    period_start int8, period_end int8, value text, value_text text, value_sum text,
    event_count int8, latest_at int8, latest_id text
) ON COMMIT DELETE ROWS
"""

_MEMBERS_FROM_ARRAYS = """unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[])
           AS u(metric_uid, customer_id, time_unit, period_start, group_key, member)"""

_INSERT_MEMBERS_FROM = """
WITH inserted AS (
    INSERT INTO tally.unique_members (metric_uid, customer_id, time_unit, period_start, group_key, member)
    SELECT u.metric_uid, u.customer_id, u.time_unit, to_timestamp(u.period_start), u.group_key, u.member
      FROM {source}{order}
    ON CONFLICT DO NOTHING
    RETURNING metric_uid, customer_id, time_unit, period_start, group_key
)
SELECT metric_uid, customer_id, time_unit, extract(epoch FROM period_start)::int8 AS period_start, group_key,
       count(*) AS added
  FROM inserted GROUP BY 1, 2, 3, 4, 5
"""
# The staged rows are in key order already (the native payloads are sorted,
# and a TEMP table is read back in the order it was written): sorting them
# again cost about a third of each statement. The unnest arrays keep the sort.
_KEY_ORDER = (  # byte order, as the native payloads, whatever the database's collation
    '\n ORDER BY u.metric_uid COLLATE "C", u.customer_id COLLATE "C", u.time_unit COLLATE "C",'
    ' u.period_start, u.group_key COLLATE "C"'
)
_MEMBER_ORDER = _KEY_ORDER + ', u.member COLLATE "C"'
_INSERT_MEMBERS = _INSERT_MEMBERS_FROM.format(source=_MEMBERS_FROM_ARRAYS, order=_MEMBER_ORDER)
_INSERT_STAGED_MEMBERS = _INSERT_MEMBERS_FROM.format(source="tally_flush_members AS u", order="")

_VALUES_FROM_ARRAYS = """unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::int8[])
       AS u(metric_uid, customer_id, group_key, time_unit, period_start, period_end, value, event_count)"""

_UPSERT_VALUES_FROM = """
INSERT INTO tally.metric_values AS v
       (metric_uid, customer_id, group_key, time_unit, period_start, period_end, value, event_count, updated_at)
SELECT u.metric_uid, u.customer_id, u.group_key, u.time_unit, to_timestamp(u.period_start),
       to_timestamp(u.period_end), u.value::numeric, u.event_count, now()
  FROM {source}{order}
ON CONFLICT (metric_uid, customer_id, time_unit, period_start, group_key) DO UPDATE
   SET value = v.value + EXCLUDED.value,
       event_count = v.event_count + EXCLUDED.event_count,
       updated_at = EXCLUDED.updated_at
"""
_UPSERT_VALUES = _UPSERT_VALUES_FROM.format(source=_VALUES_FROM_ARRAYS, order=_KEY_ORDER)
_UPSERT_STAGED_VALUES = _UPSERT_VALUES_FROM.format(source="tally_flush_values AS u", order="")

# MAX, MIN, AVG and LATEST rows (`Deltas.kind_columns`), one statement per
# kind, in this order; each merges the delta into the stored row its way.
_KINDS_FROM_ARRAYS = """unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[],
              $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[], $13::text[])
       AS u(merge, metric_uid, customer_id, group_key, time_unit, period_start, period_end,
            value, value_text, value_sum, event_count, latest_at, latest_id)"""

_UPSERT_KIND_FROM = """
INSERT INTO tally.metric_values AS v
       (metric_uid, customer_id, group_key, time_unit, period_start, period_end, value, value_text,
        value_sum, event_count, latest_at, latest_id, updated_at)
SELECT u.metric_uid, u.customer_id, u.group_key, u.time_unit, to_timestamp(u.period_start),
       to_timestamp(u.period_end), {value}, u.value_text, u.value_sum::numeric, u.event_count,
       u.latest_at, u.latest_id, now()
  FROM {{source}}
 WHERE u.merge = '{merge}'{{order}}
ON CONFLICT (metric_uid, customer_id, time_unit, period_start, group_key) DO UPDATE
   SET {set},
       event_count = v.event_count + EXCLUDED.event_count,
       updated_at = EXCLUDED.updated_at
"""

_LATER = """(EXCLUDED.latest_at > v.latest_at OR EXCLUDED.latest_at = v.latest_at
              AND EXCLUDED.latest_id COLLATE "C" > v.latest_id COLLATE "C")"""

_MERGES: dict[str, tuple[str, str]] = {
    "max": ("u.value::numeric", "value = GREATEST(v.value, EXCLUDED.value)"),
    "min": ("u.value::numeric", "value = LEAST(v.value, EXCLUDED.value)"),
    "avg": (
        "tally.average_value(u.value_sum::numeric, u.event_count)",
        "value_sum = v.value_sum + EXCLUDED.value_sum, value = tally.average_value("
        "v.value_sum + EXCLUDED.value_sum, v.event_count + EXCLUDED.event_count)",
    ),
    "latest": (
        "u.value::numeric",
        ", ".join(
            f"{column} = CASE WHEN {_LATER} THEN EXCLUDED.{column} ELSE v.{column} END"
            for column in ("value", "value_text", "latest_at", "latest_id")
        ),
    ),
}
_UPSERT_KINDS = {
    merge: _UPSERT_KIND_FROM.format(value=value, set=update, merge=merge).format(
        source=_KINDS_FROM_ARRAYS, order=_KEY_ORDER
    )
    for merge, (value, update) in _MERGES.items()
}
_UPSERT_STAGED_KINDS = {
    merge: _UPSERT_KIND_FROM.format(value=value, set=update, merge=merge).format(
        source="tally_flush_kinds AS u", order=""
    )
    for merge, (value, update) in _MERGES.items()
}


ParkedRow = tuple[object, ...]
"""A row of tally.parked_dead_letters, in _PARK's order (`DeadLetter.parked_row`)."""


@dataclass(frozen=True, slots=True)
class DedupRows:
    new_row: int | None
    merged_row: int | None


@dataclass(frozen=True, slots=True)
class FlushResult:
    rows_written: int
    members_added: int
    dedup_rows: dict[tuple[str, int], DedupRows]
    members_sent: int = 0  # member rows offered to the insert
    members_skipped: int = 0  # left out: the MemberCache knew them stored
    epochs: dict[tuple[str, int], int] = field(default_factory=dict)  # stored by this flush


class Fenced(Exception):
    """Another worker moved these partitions' offsets: this worker's pending
    work for them is stale and must be dropped (nothing was written)."""

    def __init__(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.partitions = list(partitions)
        super().__init__(f"fenced on {', '.join(f'{t}[{p}]' for t, p in self.partitions)}")


async def write_flush(
    connection: Connection,
    partitions: Sequence[FlushPart],
    deltas: Deltas,
    owner: str,
    parked: Sequence[ParkedRow] = (),
    *,
    members: MemberCache | None = None,
) -> FlushResult:
    """Run the flush transaction; raises `Fenced` (after rolling back) if any
    partition's stored offset is not the expected one.

    With `members`, UNIQUE members it knows are stored are not sent; it
    learns this flush's members only once the commit has returned, and is
    cleared when the flush is fenced (`tally.store.member_cache`)."""
    partitions = sorted(partitions, key=lambda p: (p.topic, p.partition))
    rollups = member_rollups(deltas)
    offer = members.offer(rollups) if members is not None else offer_all(rollups)
    epochs: dict[tuple[str, int], int] = {}
    try:
        async with connection.transaction():
            if partitions:
                moved = await connection.fetch(
                    _CAS,
                    [p.topic for p in partitions],
                    [p.partition for p in partitions],
                    [p.expected_offset for p in partitions],
                    [p.next_offset for p in partitions],
                    owner,
                    [p.records for p in partitions],
                    [p.duplicates for p in partitions],
                    [p.dead_letters for p in partitions],
                    [p.expected_epoch for p in partitions],
                )
                if len(moved) != len(partitions):
                    kept = {(r["topic"], r["partition"]) for r in moved}
                    raise Fenced(
                        [
                            (p.topic, p.partition)
                            for p in partitions
                            if (p.topic, p.partition) not in kept
                        ]
                    )
                epochs = {(r["topic"], r["partition"]): r["epoch"] for r in moved}
                starts = [(p, uid, at) for p in partitions for uid, at in p.starts.items()]
                if starts:
                    await connection.execute(
                        _STARTS,
                        [uid for _, uid, _ in starts],
                        [p.topic for p, _, _ in starts],
                        [p.partition for p, _, _ in starts],
                        [at for _, _, at in starts],
                        owner,
                    )
            if parked:
                await connection.executemany(_PARK, parked)
            dedup_rows = {}
            for p in partitions:
                if p.dedup is not None:
                    dedup_rows[(p.topic, p.partition)] = await _write_dedup(connection, p, p.dedup)
            staged = await _staging(connection) if offer.sent or len(deltas) else False
            added = await _write_members(connection, offer, staged)
            rows = await _write_values(connection, deltas, added, staged)
            rows += await _write_kinds(connection, deltas, staged)
    except Fenced:
        if members is not None:
            members.clear()  # the database moved on without us: know nothing
        raise
    if members is not None:
        members.remember(offer)  # committed: every member offered is stored
    return FlushResult(rows, sum(added.values()), dedup_rows, offer.sent, offer.skipped, epochs)


async def _write_dedup(connection: Connection, p: FlushPart, plan: FlushPlan) -> DedupRows:
    new_row = merged_row = None
    if plan.count:
        new_row = await connection.fetchval(
            _INSERT_SEGMENT, p.topic, p.partition, plan.bucket, plan.count, plan.blob
        )
    if plan.compaction is not None:
        bucket, replaced, blob, count = plan.compaction
        await connection.execute(_DELETE_SEGMENTS, p.topic, p.partition, list(replaced))
        merged_row = await connection.fetchval(
            _INSERT_SEGMENT, p.topic, p.partition, bucket, count, blob
        )
    await connection.execute(_EXPIRE_SEGMENTS, p.topic, p.partition, plan.expire_before)
    return DedupRows(new_row, merged_row)


ValueColumns = tuple[
    list[str], list[str], list[str], list[str], list[int], list[int], list[str], list[int]
]
"""uid, customer, group, unit, period start, period end, value text, events: one per rollup"""


def member_rollups(deltas: Deltas) -> Iterator[MemberRollup]:
    """Each pending UNIQUE rollup: its key, its period end, its members."""
    yield from deltas.unique_rollups()


def member_columns(deltas: Deltas) -> MemberColumns:
    """The pending UNIQUE members as _INSERT_MEMBERS's arrays (pure)."""
    return offer_all(member_rollups(deltas)).columns


def value_columns(deltas: Deltas, added: Counter[MemberKey]) -> ValueColumns:
    """The rollup deltas as _UPSERT_VALUES's arrays (pure). A UNIQUE delta's
    value is the number of its members that were new to the table (`added`)."""
    return deltas.value_columns(added)


async def _staging(connection: Connection) -> bool:
    """Whether this session stages rows in its TEMP tables (creating them
    the first time); False when it may not create them."""
    row = await connection.fetchrow(_STAGED)
    assert row is not None
    if row["ready"]:
        return True
    if not row["allowed"]:
        return False
    await connection.execute(_CREATE_STAGING)
    return True


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


async def _copy(connection: Connection, table: str, payload: bytes) -> None:
    """Stage a native binary COPY payload (passed whole: no executor reads)."""
    await connection.copy_to_table(table, source=_once(payload), format="binary")


async def _write_members(
    connection: Connection, offer: MemberOffer, staged: bool = False
) -> Counter[MemberKey]:
    """Insert the offered UNIQUE members; how many of each rollup's were new."""
    added: Counter[MemberKey] = Counter()
    if not offer.sent:
        return added
    if staged:
        _, payload = member_copy(offer.sent_by_rollup)
        await _copy(connection, "tally_flush_members", payload)
        rows = await connection.fetch(_INSERT_STAGED_MEMBERS)
    else:
        rows = await connection.fetch(_INSERT_MEMBERS, *offer.columns)
    for row in rows:
        key = (
            row["metric_uid"],
            row["customer_id"],
            row["time_unit"],
            row["period_start"],
            row["group_key"],
        )
        added[key] = row["added"]
    return added


async def _write_values(
    connection: Connection, deltas: Deltas, added: Counter[MemberKey], staged: bool = False
) -> int:
    if staged:
        count, payload = deltas.value_copy(added)
        if count:
            await _copy(connection, "tally_flush_values", payload)
            await connection.execute(_UPSERT_STAGED_VALUES)
        return count
    columns = value_columns(deltas, added)
    if columns[0]:
        await connection.execute(_UPSERT_VALUES, *columns)
    return len(columns[0])


async def _write_kinds(connection: Connection, deltas: Deltas, staged: bool = False) -> int:
    """MAX, MIN, AVG and LATEST rollups: one upsert per kind present."""
    if staged:
        count, present, payload = deltas.kind_copy()
        if count:
            await _copy(connection, "tally_flush_kinds", payload)
    else:
        columns = deltas.kind_columns()
        count, present = len(columns[0]), list(set(columns[0]))
    for merge in _MERGES:  # this order, in every worker
        if merge not in present:
            continue
        if staged:
            await connection.execute(_UPSERT_STAGED_KINDS[merge])
        else:
            await connection.execute(_UPSERT_KINDS[merge], *columns)
    return count


async def load_partition(
    connection: Connection, topic: str, partition: int, min_bucket: int | None
) -> tuple[int, list[tuple[int, int, bytes]]]:
    """The stored offset and dedup rows of a partition, from one snapshot.

    Creates the offset row (at -1, "from the beginning") the first time a
    partition is seen, so the first flush has something to compare with.
    """
    await connection.execute(
        "INSERT INTO tally.partition_offsets (topic, partition) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        topic,
        partition,
    )
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        offset = await connection.fetchval(
            "SELECT next_offset FROM tally.partition_offsets WHERE topic = $1 AND partition = $2",
            topic,
            partition,
        )
        rows: list[tuple[int, int, bytes]] = []
        if min_bucket is not None:
            records = await connection.fetch(
                "SELECT segment_id, bucket, ids FROM tally.dedup_segments"
                " WHERE topic = $1 AND partition = $2 AND bucket >= $3 ORDER BY segment_id",
                topic,
                partition,
                min_bucket,
            )
            rows = [(r["segment_id"], r["bucket"], r["ids"]) for r in records]
    return int(offset), rows


async def load_partition_into(
    connection: Connection,
    topic: str,
    partition: int,
    min_bucket: int | None,
    window: DedupWindow | None,
    now: float,
) -> tuple[int, int]:
    """The stored offset and epoch of a partition, its dedup window rebuilt
    in place, from one snapshot. Segments stream through a cursor into the
    window, so memory holds one blob at a time, never all of them
    (`WindowLoad`). Loading bumps the epoch first: a worker that loaded
    earlier (a zombie) is fenced at its next flush even if no flush moves
    the offset."""
    await connection.execute(
        "INSERT INTO tally.partition_offsets AS o (topic, partition) VALUES ($1, $2)"
        " ON CONFLICT (topic, partition) DO UPDATE SET epoch = o.epoch + 1",
        topic,
        partition,
    )
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        stored = await connection.fetchrow(
            "SELECT next_offset, epoch FROM tally.partition_offsets"
            " WHERE topic = $1 AND partition = $2",
            topic,
            partition,
        )
        assert stored is not None
        offset = stored["next_offset"]
        if window is not None and min_bucket is not None:
            ids = await connection.fetchval(
                "SELECT coalesce(sum(id_count), 0) FROM tally.dedup_segments"
                " WHERE topic = $1 AND partition = $2 AND bucket >= $3",
                topic,
                partition,
                min_bucket,
            )
            loading = window.loader(now, int(ids))
            async for row in connection.cursor(
                "SELECT segment_id, bucket, ids FROM tally.dedup_segments"
                " WHERE topic = $1 AND partition = $2 AND bucket >= $3 ORDER BY segment_id",
                topic,
                partition,
                min_bucket,
                prefetch=4,
            ):
                loading.add(row["segment_id"], row["bucket"], row["ids"])
            loading.finish()
    return int(offset), int(stored["epoch"])
