"""Manual corrections of rollups and their audit trail (`tally.value_adjustments`).

An adjustment adds its delta to the rollup (`value = value + delta`, creating
the row when missing) and writes its audit row in the caller's transaction.
Flushes also add deltas to the same row, so the order of the two does not
matter; `event_count` is left alone, since no event contributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from tally.store.pool import Connection


@dataclass(frozen=True, slots=True)
class Rollup:
    metric_uid: str
    customer_id: str
    time_unit: str
    period_start: datetime
    period_end: datetime
    group_key: str


@dataclass(frozen=True, slots=True)
class AdjustmentFilter:
    metric_uid: str | None = None
    customer_id: str | None = None
    time_unit: str | None = None
    group_key: str | None = None
    period_start: datetime | None = None


async def add_to_rollup(connection: Connection, rollup: Rollup, delta: Decimal) -> Decimal:
    """`value = value + delta` on the rollup (created at `delta` if missing); the new value."""
    value = await connection.fetchval(
        "INSERT INTO tally.metric_values AS v (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, event_count) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)"
        " ON CONFLICT (metric_uid, customer_id, time_unit, period_start, group_key)"
        " DO UPDATE SET value = v.value + EXCLUDED.value, updated_at = now()"
        " RETURNING value",
        rollup.metric_uid,
        rollup.customer_id,
        rollup.group_key,
        rollup.time_unit,
        rollup.period_start,
        rollup.period_end,
        delta,
    )
    assert isinstance(value, Decimal)
    return value


_COLUMNS = (
    "seq, id, metric_uid, customer_id, time_unit, period_start, period_end, group_key,"
    " delta, value_before, value_after, reason, principal, idempotency_key, created_at"
)


_AUDIT_LOCK_KEY = 0x7A11_7A11_0000_0002  # migrations hold ...0001


async def record(
    connection: Connection,
    rollup: Rollup,
    *,
    delta: Decimal,
    value_after: Decimal,
    reason: str,
    principal: str,
    idempotency_key: str,
) -> asyncpg.Record:
    # Audit rows are paged by seq; a bigserial is drawn at insert, but
    # transactions commit in any order, so a reader could pass seq 11 before
    # seq 10 commits and never see it. One writer at a time (until commit)
    # keeps seq order the commit order. Adjustments are rare; this costs nothing.
    await connection.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK_KEY)
    row = await connection.fetchrow(
        "INSERT INTO tally.value_adjustments (metric_uid, customer_id, time_unit, period_start,"
        " period_end, group_key, delta, value_before, value_after, reason, principal,"
        " idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        f" RETURNING {_COLUMNS}",
        rollup.metric_uid,
        rollup.customer_id,
        rollup.time_unit,
        rollup.period_start,
        rollup.period_end,
        rollup.group_key,
        delta,
        value_after - delta,
        value_after,
        reason,
        principal,
        idempotency_key,
    )
    assert row is not None
    return row


async def page_adjustments(
    connection: Connection, where: AdjustmentFilter, after_seq: int | None, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` audit rows in the order they were made, after `after_seq`."""
    clauses: list[str] = []
    params: list[object] = []
    for column, given in (
        ("metric_uid", where.metric_uid),
        ("customer_id", where.customer_id),
        ("time_unit", where.time_unit),
        ("group_key", where.group_key),
        ("period_start", where.period_start),
    ):
        if given is not None:
            params.append(given)
            clauses.append(f"{column} = ${len(params)}")
    if after_seq is not None:
        params.append(after_seq)
        clauses.append(f"seq > ${len(params)}")
    params.append(limit)
    return list(
        await connection.fetch(
            f"SELECT {_COLUMNS} FROM tally.value_adjustments"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + f" ORDER BY seq LIMIT ${len(params)}",
            *params,
        )
    )
