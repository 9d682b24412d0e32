"""Metric definitions in `tally.metrics`: apply (create or update mutable
fields), list, and the revision a worker polls to pick up changes.

The revision is one row, `tally.definitions_revision`, that a trigger on
`tally.metrics` increments in every transaction that writes a definition. A
sequence would not do: numbers are drawn at write time but transactions
commit in any order, so a poll could see 11 before 10 committed and never
notice 10. The row is locked until the writer commits, so the counter moves
in commit order: a poll that reads N sees every change up to N.

Every writer calls `lock_definitions` first, before it locks any metric row:
writers of definitions then queue on one lock, in one order, and cannot
deadlock one another. (The trigger alone would count a hand-written UPDATE
too, but take the counter after that statement's row locks.)

The HTTP API's single-definition reads and writes (`insert_metric`,
`find_metric`, `page_metrics`, `update_metric`, `delete_metric_by_id`) are
here too, at the end: this module owns the table.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from tally.contracts.metric import (
    STORED_ZONE,
    FieldError,
    MetricDefinitionError,
    UsageMetric,
    UsageMetricDefinition,
    changed_fields,
    immutable_changes,
    keep_stored_spelling,
    parse_metric,
)
from tally.store.pool import Connection


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Change:
    uid: str
    action: Action
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.action is Action.UPDATE:
            return f"update {self.uid}: {', '.join(self.fields)}"
        return f"{self.action.value} {self.uid}"


def stored_document(definition: UsageMetricDefinition) -> dict[str, Any]:
    """The `definition` column: every field but deletedAt, which has its own."""
    document = definition.to_document()
    document.pop("deletedAt", None)
    return document


def row_to_metric(row: asyncpg.Record) -> UsageMetric:
    """The stored definition; its zone is taken as stored, known here or not."""
    document = dict(row["definition"])
    if row["deleted_at"] is not None:
        document["deletedAt"] = row["deleted_at"]
    return UsageMetric.model_validate(
        {
            **document,
            "id": str(row["id"]),
            "createdAt": row["created_at"],
            "updatedAt": row["updated_at"],
        },
        context={STORED_ZONE: document.get("timezone")},
    )


_SELECT = (
    "SELECT id, uid, definition, created_at, updated_at, deleted_at, revision FROM tally.metrics"
)


async def list_metrics(connection: Connection, include_deleted: bool = True) -> list[UsageMetric]:
    where = "" if include_deleted else " WHERE deleted_at IS NULL"
    return [row_to_metric(row) for row in await connection.fetch(_SELECT + where + " ORDER BY uid")]


async def lock_definitions(connection: Connection) -> int:
    """Queue behind every other writer of definitions until this transaction ends.

    Call it inside the writing transaction, before anything else touches
    `tally.metrics`; returns the revision committed so far."""
    value = await connection.fetchval("SELECT revision FROM tally.definitions_revision FOR UPDATE")
    return int(value)


async def revision(connection: Connection) -> int:
    """The definitions' revision: moves, in commit order, with every committed change."""
    return int(await connection.fetchval("SELECT revision FROM tally.definitions_revision"))


@dataclass(frozen=True, slots=True)
class Refused:
    """A live definition this process cannot run; the others go on."""

    uid: str
    reason: str  # a short label: invalid_definition, unknown_timezone, cannot_compile
    detail: str


@dataclass(frozen=True, slots=True)
class Loaded:
    revision: int
    metrics: tuple[UsageMetric, ...]
    refused: tuple[Refused, ...]


async def load_definitions(connection: Connection) -> Loaded:
    """Every definition and the revision they are at, from one snapshot.

    A row that does not validate (written past validation, or by a newer
    Tally) is refused, not raised, so it cannot stop the others from loading.
    Deleted rows that do not validate are left out silently: they never run."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        current = await revision(connection)
        metrics, refused = await read_definitions(connection)
    return Loaded(current, metrics, refused)


async def read_definitions(
    connection: Connection,
) -> tuple[tuple[UsageMetric, ...], tuple[Refused, ...]]:
    """load_definitions without the revision: reads only `tally.metrics`, so a
    role granted that table alone (tally_reader: `tally explain`) can call it."""
    rows = await connection.fetch(_SELECT + " ORDER BY uid")
    metrics: list[UsageMetric] = []
    refused: list[Refused] = []
    for row in rows:
        try:
            metrics.append(row_to_metric(row))
        except (ValidationError, TypeError, ValueError) as exc:
            if row["deleted_at"] is None:
                refused.append(Refused(row["uid"], "invalid_definition", _describe(exc)))
    return tuple(metrics), tuple(refused)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(definition)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
    return f"{type(exc).__name__}: {exc}"


async def apply_definitions(
    connection: Connection,
    definitions: Sequence[UsageMetricDefinition],
    dry_run: bool = False,
) -> list[Change]:
    """Create new definitions and update mutable fields of existing ones.

    All or nothing: if any definition tries to change an immutable field,
    nothing is written and `MetricDefinitionError` names every such field.
    """
    uids = [d.uid for d in definitions]
    duplicates = sorted({uid for uid in uids if uids.count(uid) > 1})
    if duplicates:
        raise MetricDefinitionError(
            [FieldError("uid", f"{uid!r} appears more than once") for uid in duplicates]
        )
    async with connection.transaction():
        if not dry_run:
            await lock_definitions(connection)
        # Serialise appliers so two of them cannot both "create" one uid.
        await connection.execute("LOCK TABLE tally.metrics IN SHARE ROW EXCLUSIVE MODE")
        rows = await connection.fetch(_SELECT + " WHERE uid = ANY($1::text[])", uids)
        existing = {row["uid"]: row_to_metric(row) for row in rows}
        changes: list[Change] = []
        refused: list[FieldError] = []
        kept: dict[str, UsageMetricDefinition] = {}
        for definition in definitions:
            old = existing.get(definition.uid)
            if old is None:
                changes.append(Change(definition.uid, Action.CREATE))
                continue
            old_definition = parse_metric(_definition_document(old), stored_zone=old.timezone)
            frozen = immutable_changes(old_definition, definition)
            if frozen:
                refused += [
                    FieldError(
                        f"{definition.uid}.{name}",
                        "is immutable after creation; create a new metric with a new uid",
                    )
                    for name in frozen
                ]
                continue
            fields = changed_fields(old_definition, definition)
            kept[definition.uid] = keep_stored_spelling(old_definition, definition)
            changes.append(
                Change(definition.uid, Action.UPDATE if fields else Action.UNCHANGED, tuple(fields))
            )
        if refused:
            raise MetricDefinitionError(refused)
        if dry_run:
            return changes
        by_uid = {d.uid: d for d in definitions} | kept
        for change in changes:
            definition = by_uid[change.uid]
            if change.action is Action.CREATE:
                await connection.execute(
                    "INSERT INTO tally.metrics (uid, definition, deleted_at) VALUES ($1, $2, $3)",
                    definition.uid,
                    stored_document(definition),
                    definition.deleted_at,
                )
            elif change.action is Action.UPDATE:
                await connection.execute(
                    "UPDATE tally.metrics SET definition = $2, deleted_at = $3, updated_at = now()"
                    " WHERE uid = $1",
                    definition.uid,
                    stored_document(definition),
                    definition.deleted_at,
                )
    return changes


def _definition_document(metric: UsageMetric) -> dict[str, Any]:
    document = metric.to_document()
    for server_field in ("id", "createdAt", "updatedAt"):
        document.pop(server_field, None)
    return document


async def delete_metric(connection: Connection, uid: str, when: datetime | None = None) -> bool:
    """Set deletedAt (values are kept); False if there is no such live metric."""
    async with connection.transaction():
        await lock_definitions(connection)
        status = await connection.execute(
            "UPDATE tally.metrics SET deleted_at = coalesce($2, now()), updated_at = now()"
            " WHERE uid = $1 AND deleted_at IS NULL",
            uid,
            when,
        )
    return str(status).endswith(" 1")


# The HTTP API: one definition at a time, by id or uid.

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


async def delete_metric_by_id(connection: Connection, metric_id: str) -> UsageMetric | None:
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
