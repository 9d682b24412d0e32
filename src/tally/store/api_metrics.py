"""Single-definition reads and writes of `tally.metrics` for the HTTP API.

Rows are the ones `tally.store.definitions` writes and the worker reads: the
wire document without `deletedAt` in `definition`, `deleted_at` in its own
column. Every write first takes `lock_definitions` (writers queue in one
order), and the trigger on `tally.metrics` moves the revision workers poll.
"""

from __future__ import annotations

import uuid

from tally.contracts.metric import UsageMetric, UsageMetricDefinition
from tally.store.definitions import lock_definitions, row_to_metric, stored_document
from tally.store.pool import Connection

_COLUMNS = "id, uid, definition, created_at, updated_at, deleted_at"


def as_id(text: str) -> uuid.UUID | None:
    """The UUID in `text` if it is one in its canonical 36-character form.

    Only that form: 32 bare hex digits can also be a valid uid."""
    if len(text) != 36:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


async def insert_metric(connection: Connection, definition: UsageMetricDefinition) -> UsageMetric:
    """Create; asyncpg.UniqueViolationError if the uid exists (deleted or not)."""
    async with connection.transaction():
        await lock_definitions(connection)
        row = await connection.fetchrow(
            "INSERT INTO tally.metrics (uid, definition, deleted_at) VALUES ($1, $2, $3)"
            f" RETURNING {_COLUMNS}",
            definition.uid,
            stored_document(definition),
            definition.deleted_at,
        )
    assert row is not None
    return row_to_metric(row)


async def find_metric(
    connection: Connection, id_or_uid: str, include_deleted: bool, for_update: bool = False
) -> UsageMetric | None:
    """The metric; with `for_update`, locked for a change in the caller's transaction."""
    if for_update:
        await lock_definitions(connection)
    metric_id = as_id(id_or_uid)
    where = "id = $1" if metric_id is not None else "uid = $1"
    if not include_deleted:
        where += " AND deleted_at IS NULL"
    lock = " FOR UPDATE" if for_update else ""
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM tally.metrics WHERE {where}{lock}",
        metric_id if metric_id is not None else id_or_uid,
    )
    return None if row is None else row_to_metric(row)


async def page_metrics(
    connection: Connection,
    *,
    event_type: str | None,
    include_deleted: bool,
    after_uid: str | None,
    limit: int,
) -> list[UsageMetric]:
    """Up to `limit` definitions in uid order, after `after_uid`."""
    where: list[str] = []
    params: list[object] = []
    if event_type is not None:
        params.append(event_type)
        where.append(f"definition->>'eventType' = ${len(params)}")
    if not include_deleted:
        where.append("deleted_at IS NULL")
    if after_uid is not None:
        params.append(after_uid)
        where.append(f"uid > ${len(params)}")
    params.append(limit)
    rows = await connection.fetch(
        f"SELECT {_COLUMNS} FROM tally.metrics"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY uid LIMIT ${len(params)}",
        *params,
    )
    return [row_to_metric(row) for row in rows]


async def update_metric(
    connection: Connection, metric_id: str, definition: UsageMetricDefinition
) -> UsageMetric:
    """Store a changed definition (mutable fields only; the caller checked)."""
    async with connection.transaction():
        await lock_definitions(connection)  # held already after find_metric(for_update=True)
        row = await connection.fetchrow(
            "UPDATE tally.metrics SET definition = $2, deleted_at = $3, updated_at = now()"
            f" WHERE id = $1 RETURNING {_COLUMNS}",
            uuid.UUID(metric_id),
            stored_document(definition),
            definition.deleted_at,
        )
    assert row is not None
    return row_to_metric(row)


async def delete_metric(connection: Connection, metric_id: str) -> UsageMetric | None:
    """Set deletedAt now (values are kept); None if it is already deleted."""
    async with connection.transaction():
        await lock_definitions(connection)
        row = await connection.fetchrow(
            "UPDATE tally.metrics SET deleted_at = now(), updated_at = now()"
            f" WHERE id = $1 AND deleted_at IS NULL RETURNING {_COLUMNS}",
            uuid.UUID(metric_id),
        )
    return None if row is None else row_to_metric(row)


async def metric_by_uid(connection: Connection, uid: str) -> UsageMetric | None:
    """The definition of `uid`, deleted or not (adjustments may correct either)."""
    row = await connection.fetchrow(f"SELECT {_COLUMNS} FROM tally.metrics WHERE uid = $1", uid)
    return None if row is None else row_to_metric(row)
