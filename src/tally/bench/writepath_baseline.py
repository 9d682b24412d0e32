"""The write path as it was before the "Write path" work (commit 7476506):
every pending UNIQUE member sent at every flush, and both statements fed
by unnest arrays. Its SQL is kept verbatim as the baseline `tally.bench
writepath` measures against, and that tests/integration/test_write_path.py
holds the new path equal to. Not used by the worker.

The arrays those statements take now come straight from the native
core's Deltas (`member_columns()`, every pending member, and
`value_columns(added)`): the Python loops over the old core's tables that
built them went with that core. What the baseline stands for is its
statements.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tally.core.engine import Deltas
from tally.store.flush import (
    _CAS,
    _PARK,
    Fenced,
    FlushResult,
    MemberKey,
    ParkedRow,
    PartitionFlush,
    _write_dedup,
)
from tally.store.pool import Connection

_INSERT_MEMBERS = """
WITH inserted AS (
    INSERT INTO tally.unique_members (metric_uid, customer_id, time_unit, period_start, group_key, member)
    SELECT u.metric_uid, u.customer_id, u.time_unit, to_timestamp(u.period_start), u.group_key, u.member
      FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[])
           AS u(metric_uid, customer_id, time_unit, period_start, group_key, member)
     ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT DO NOTHING
    RETURNING metric_uid, customer_id, time_unit, period_start, group_key
)
SELECT metric_uid, customer_id, time_unit, extract(epoch FROM period_start)::int8 AS period_start, group_key,
       count(*) AS added
  FROM inserted GROUP BY 1, 2, 3, 4, 5
"""
_UPSERT_VALUES = """
INSERT INTO tally.metric_values AS v
       (metric_uid, customer_id, group_key, time_unit, period_start, period_end, value, event_count, updated_at)
SELECT u.metric_uid, u.customer_id, u.group_key, u.time_unit, to_timestamp(u.period_start),
       to_timestamp(u.period_end), u.value::numeric, u.event_count, now()
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::int8[])
       AS u(metric_uid, customer_id, group_key, time_unit, period_start, period_end, value, event_count)
 ORDER BY u.metric_uid, u.customer_id, u.time_unit, u.period_start, u.group_key
ON CONFLICT (metric_uid, customer_id, time_unit, period_start, group_key) DO UPDATE
   SET value = v.value + EXCLUDED.value,
       event_count = v.event_count + EXCLUDED.event_count,
       updated_at = EXCLUDED.updated_at
"""


async def write_flush_baseline(
    connection: Connection,
    partitions: Sequence[PartitionFlush],
    deltas: Deltas,
    owner: str,
    parked: Sequence[ParkedRow] = (),
) -> FlushResult:
    """Run the flush transaction; raises `Fenced` (after rolling back) if any
    partition's stored offset is not the expected one."""
    partitions = sorted(partitions, key=lambda p: (p.topic, p.partition))
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
        if parked:
            await connection.executemany(_PARK, parked)
        dedup_rows = {}
        for p in partitions:
            if p.dedup is not None:
                dedup_rows[(p.topic, p.partition)] = await _write_dedup(connection, p, p.dedup)
        added = await _write_members(connection, deltas)
        rows = await _write_values(connection, deltas, added)
    return FlushResult(rows, sum(added.values()), dedup_rows)


async def _write_members(connection: Connection, deltas: Deltas) -> Counter[MemberKey]:
    """Insert UNIQUE members; how many of each rollup's were new."""
    columns = deltas.member_columns()
    added: Counter[MemberKey] = Counter()
    if not columns[0]:
        return added
    for row in await connection.fetch(_INSERT_MEMBERS, *columns):
        key = (
            row["metric_uid"],
            row["customer_id"],
            row["time_unit"],
            row["period_start"],
            row["group_key"],
        )
        added[key] = row["added"]
    return added


async def _write_values(connection: Connection, deltas: Deltas, added: Counter[MemberKey]) -> int:
    columns = deltas.value_columns(added)
    if columns[0]:
        await connection.execute(_UPSERT_VALUES, *columns)
    return len(columns[0])
