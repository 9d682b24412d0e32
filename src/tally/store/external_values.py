"""External values in `tally.metric_values`, each with its audit row
(`tally.external_value_audit`), for the HTTP API.

A value is the rollup row of its period: a second value for the same
(metric, entity, time unit, period) is not stored (`None`, the API's 409).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from tally.contracts.external import ExternalValue
from tally.store.pool import Connection

_COLUMNS = (
    "external_uid, metric_uid, customer_id, time_unit, period_start, period_end, metric_date,"
    " value, value_text, value_timezone, metadata, updated_at"
)


async def insert_value(
    connection: Connection,
    value: ExternalValue,
    *,
    context_type: str,
    entity_uid: str,
    principal: str,
) -> asyncpg.Record | None:
    """The stored row, or None if that period already has a value."""
    body = value.body
    value_uid = uuid.uuid4()
    metadata = body.metadata  # the jsonb codec (tally.store.pool) encodes it
    async with connection.transaction():
        row = await connection.fetchrow(
            "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
            " period_start, period_end, value, value_text, event_count, external_uid,"
            " metric_date, value_timezone, metadata, latest_at, latest_id)"
            " VALUES ($1, $2, '', $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, $12, $13)"
            " ON CONFLICT (metric_uid, customer_id, time_unit, period_start, group_key)"
            f" DO NOTHING RETURNING {_COLUMNS}",
            body.metric_uid,
            entity_uid,
            body.time_unit.value,
            value.period_start,
            value.period_end,
            value.number,
            value.text,
            value_uid,
            body.metric_date,
            body.timezone,
            metadata,
            # What LATEST combines by (migration 0007): a later period is the later
            # value. Other kinds have none.
            int(value.period_start.timestamp()) * 1_000_000 if value.latest else None,
            str(value_uid) if value.latest else None,
        )
        if row is None:
            return None
        await connection.execute(
            "INSERT INTO tally.external_value_audit (value_uid, metric_uid, context_type,"
            " entity_uid, time_unit, metric_date, period_start, value, value_text,"
            " value_timezone, metadata, principal)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            row["external_uid"],
            body.metric_uid,
            context_type,
            entity_uid,
            body.time_unit.value,
            body.metric_date,
            value.period_start,
            value.number,
            value.text,
            body.timezone,
            metadata,
            principal,
        )
    return row


def created_at(row: asyncpg.Record) -> datetime:
    stamp = row["updated_at"]
    assert isinstance(stamp, datetime)
    return stamp
