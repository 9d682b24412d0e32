"""Reading rollups from `tally.metric_values` a page at a time.

Pages follow the primary key, (metric_uid, customer_id, time_unit,
period_start, group_key), so a page is an index range scan when the metric is
given, and a keyset cursor is stable while workers keep writing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tally.contracts.group import GroupTerm, decode_group, grouping_names
from tally.contracts.value import MetricValue
from tally.store.pool import Connection

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ValueKey = tuple[str, str, str, int, str]
MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def to_micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class ValueFilter:
    metric_uid: str | None = None
    customer_id: str | None = None
    time_unit: str | None = None
    group_key: str | None = None
    # group.<property>=<text> filters, resolved against metric_uid's grouping
    # (tally.contracts.group.group_terms); only meaningful with metric_uid.
    group: tuple[GroupTerm, ...] = ()
    since: datetime | None = None  # periods starting at or after
    until: datetime | None = None  # periods starting before


def value_key(value: MetricValue) -> ValueKey:
    """The sort key of a row, for the next page's cursor."""
    return (
        value.metric_uid,
        value.customer_id,
        value.time_unit.value,
        to_micros(value.period_start),
        value.group_key,
    )


def _row_to_value(row: asyncpg.Record, names: tuple[str, ...] | None) -> MetricValue:
    latest_at = row["latest_at"]
    return MetricValue.from_row(
        metric_uid=row["metric_uid"],
        customer_id=row["customer_id"],
        group_key=row["group_key"],
        group=None if names is None else decode_group(names, row["group_key"]),
        time_unit=row["time_unit"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        value=row["value"],
        value_text=row["value_text"],
        value_sum=row["value_sum"],
        latest_at=None if latest_at is None else from_micros(latest_at),
        latest_id=row["latest_id"],
        event_count=row["event_count"],
        updated_at=row["updated_at"],
    )


async def grouping_of(connection: Connection, uids: list[str]) -> dict[str, tuple[str, ...]]:
    """The grouping properties of each stored metric in `uids`, deleted or not."""
    rows = await connection.fetch(
        "SELECT uid, definition -> 'groupingProperty' AS one,"
        " definition -> 'groupingProperties' AS several"
        " FROM tally.metrics WHERE uid = ANY($1::text[])",
        uids,
    )
    return {row["uid"]: grouping_names(row["one"], row["several"]) for row in rows}


async def page_values(
    connection: Connection, where: ValueFilter, after: ValueKey | None, limit: int
) -> list[MetricValue]:
    clauses: list[str] = []
    params: list[object] = []

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    for column, given in (
        ("metric_uid", where.metric_uid),
        ("customer_id", where.customer_id),
        ("time_unit", where.time_unit),
        ("group_key", where.group_key),
    ):
        if given is not None:
            clauses.append(f"{column} = {param(given)}")
    if where.group and where.metric_uid is None:
        raise ValueError("group terms are positions in one metric's grouping: give metric_uid")
    for term in where.group:
        if term.position is None:
            clauses.append(f"group_key = {param(term.text)}")
        else:
            # A several-key group_key is a JSON array the worker wrote (or an
            # adjustment checked to be canonical); a null element (a missing
            # key) equals no text, "" included. The CASE keeps the cast off
            # other metrics' rows (raw text, not JSON): PostgreSQL may test
            # AND's terms in any order, CASE's in the written one.
            clauses.append(
                f"(CASE WHEN metric_uid = {param(where.metric_uid)} AND group_key LIKE '[%'"
                f" THEN group_key::jsonb ->> {term.position:d} END) = {param(term.text)}"
            )
    if where.since is not None:
        clauses.append(f"period_start >= {param(where.since)}")
    if where.until is not None:
        clauses.append(f"period_start < {param(where.until)}")
    if after is not None:
        uid, customer, unit, start, group = after
        clauses.append(
            "(metric_uid, customer_id, time_unit, period_start, group_key) > ("
            + ", ".join(
                [param(uid), param(customer), param(unit), param(from_micros(start)), param(group)]
            )
            + ")"
        )
    sql = (
        "SELECT metric_uid, customer_id, group_key, time_unit, period_start, period_end,"
        " value, value_text, value_sum, latest_at, latest_id, event_count, updated_at"
        " FROM tally.metric_values"
        + (" WHERE " + " AND ".join(clauses) if clauses else "")
        + " ORDER BY metric_uid, customer_id, time_unit, period_start, group_key"
        + f" LIMIT {param(limit)}"
    )
    rows = await connection.fetch(sql, *params)
    if not rows:
        return []
    names = await grouping_of(connection, sorted({row["metric_uid"] for row in rows}))
    return [_row_to_value(row, names.get(row["metric_uid"])) for row in rows]
