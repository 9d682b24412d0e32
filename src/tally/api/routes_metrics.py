"""`/usage-metrics`: create, list, read, change and delete metric definitions.

Bodies are validated by the contract (`parse_metric`, `immutable_changes`);
rows are written by `tally.store.definitions`, in the shape the worker reads.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from tally.api import idempotency
from tally.api.auth import Admin, Reader
from tally.api.body import read_json, require_object
from tally.api.cursor import USAGE_METRICS, decode, encode
from tally.api.deps import (
    AFTER,
    DEFAULT_LIMIT,
    IncludeDeleted,
    Limit,
    Pool,
    UsageMetricsCursor,
    body_ref,
    json_response,
    text_query,
)
from tally.api.errors import ApiError, field_errors, item, responses
from tally.api.models import NO_NUL, UsageMetricPage
from tally.contracts.metric import (
    MetricDefinitionError,
    UsageMetric,
    UsageMetricDefinition,
    changed_fields,
    immutable_changes,
    keep_stored_spelling,
    parse_metric,
    uid_from_name,
)
from tally.store import definitions as store
from tally.store.pool import Connection
from tally.telemetry.logs import Log

router = APIRouter(prefix="/usage-metrics", tags=["usage metrics"])
log = Log("tally.api")

SERVER_FIELDS = ("id", "createdAt", "updatedAt")

IdOrUid = Annotated[
    str,
    Path(
        alias="idOrUid",
        min_length=1,
        max_length=256,
        pattern=NO_NUL,
        description="The metric's id (a UUID) or its uid.",
    ),
]


def parse_definition(
    document: dict[str, Any], stored_zone: str | None = None
) -> UsageMetricDefinition:
    try:
        definition = parse_metric(document, stored_zone)
    except MetricDefinitionError as exc:
        raise field_errors(exc.errors) from None
    if definition.deleted_at is not None:
        try:
            definition.deleted_at.astimezone(UTC)
        except OverflowError:
            raise ApiError.one(
                422, ["body", "deletedAt"], "outside the years 1-9999 in UTC", "date_time"
            ) from None
    return definition


def _not_found(id_or_uid: str) -> ApiError:
    return ApiError.one(
        404, ["path", "idOrUid"], f"no metric has the id or uid {id_or_uid!r}", "not_found"
    )


def _shown(metric: UsageMetric) -> dict[str, Any]:
    return metric.to_document()


@router.post(
    "",
    status_code=201,
    response_model=UsageMetric,
    responses=responses(401, 403, 409, 413, 415, 422),
    openapi_extra=body_ref(
        "UsageMetricDefinition", "A usage metric definition (docs/design.md §2.2)."
    ),
    summary="Create a usage metric",
)
async def create_usage_metric(
    request: Request,
    principal: Admin,
    pool: Pool,
    idempotency_key: idempotency.OptionalKey = None,
) -> Response:
    """201 with the stored metric; 409 if the uid exists (a deleted metric keeps its uid).
    Without a `uid` (Sequence's body has none) it is derived from `name`
    (`uid_from_name`) and answered; a collision is 409 naming that uid."""
    document = require_object(await read_json(request))
    with_uid = with_derived_uid(document)
    definition = parse_definition(with_uid)
    derived = "uid" not in document

    async def work(connection: Connection) -> Response:
        metric = await insert_or_conflict(connection, definition, derived, principal.name)
        return json_response(_shown(metric), 201, {"Location": f"/usage-metrics/{metric.id}"})

    return await idempotency.run(
        pool,
        operation="POST /usage-metrics",
        key=idempotency_key,
        document=document,
        principal=principal.name,
        work=work,
    )


def with_derived_uid(document: dict[str, Any], name_field: str = "name") -> dict[str, Any]:
    """`document` with a uid derived from its name when it has none."""
    name = document.get(name_field)
    if "uid" in document or not isinstance(name, str) or not name.strip():
        return document
    return {**document, "uid": uid_from_name(name)}


async def insert_or_conflict(
    connection: Connection, definition: UsageMetricDefinition, derived: bool, by: str
) -> UsageMetric:
    """Store a new definition; 409 naming the uid if it exists."""
    try:
        metric = await store.insert_metric(connection, definition)
    except asyncpg.UniqueViolationError:
        how = " (derived from the name; send a uid to choose another)" if derived else ""
        raise ApiError.one(
            409,
            ["body", "uid"],
            f"a metric with the uid {definition.uid!r} exists{how} (deleted ones keep theirs)",
            "conflict",
        ) from None
    log.info("metric created", uid=metric.uid, by=by)
    return metric


@router.get(
    "",
    response_model=UsageMetricPage,
    responses=responses(401, 403, 422),
    summary="List usage metrics",
)
async def list_usage_metrics(
    principal: Reader,
    pool: Pool,
    event_type: Annotated[
        str | None, text_query("eventType", "Only metrics of this event type.")
    ] = None,
    include_deleted: IncludeDeleted = False,
    limit: Limit = DEFAULT_LIMIT,
    after: Annotated[UsageMetricsCursor | None, AFTER] = None,
) -> Response:
    """Metrics in uid order, a page at a time; deleted ones only on request."""
    after_uid = None
    if after is not None:
        (after_uid,) = decode(USAGE_METRICS, after, (str,))
    async with pool.acquire() as connection:
        metrics = await store.page_metrics(
            connection,
            event_type=event_type,
            include_deleted=include_deleted,
            after_uid=str(after_uid) if after_uid is not None else None,
            limit=limit + 1,
        )
    more = len(metrics) > limit
    metrics = metrics[:limit]
    cursor = encode(USAGE_METRICS, [metrics[-1].uid]) if more else None
    return json_response({"items": [_shown(m) for m in metrics], "pagination": {"after": cursor}})


@router.get(
    "/{idOrUid}",
    response_model=UsageMetric,
    responses=responses(401, 403, 404, 422),
    summary="Get a usage metric",
)
async def get_usage_metric(
    principal: Reader, pool: Pool, id_or_uid: IdOrUid, include_deleted: IncludeDeleted = False
) -> Response:
    """A deleted metric is 404 unless `includeDeleted=true`."""
    async with pool.acquire() as connection:
        metric = await store.find_metric(connection, id_or_uid, include_deleted)
    if metric is None:
        raise _not_found(id_or_uid)
    return json_response(_shown(metric))


@router.patch(
    "/{idOrUid}",
    response_model=UsageMetric,
    responses=responses(401, 403, 404, 413, 415, 422),
    openapi_extra=body_ref(
        "UsageMetricPatch",
        "The fields to change: name, description, unit, deletedAt (null clears). An immutable "
        "field may be sent only with its stored value.",
    ),
    summary="Change the mutable fields of a usage metric",
)
async def update_usage_metric(
    request: Request,
    principal: Admin,
    pool: Pool,
    id_or_uid: IdOrUid,
    include_deleted: IncludeDeleted = False,
) -> Response:
    """Change name, description, unit or deletedAt; an immutable field that differs
    from the stored one is refused with 422 naming it. A deleted metric can be
    restored with `includeDeleted=true` and `{"deletedAt": null}`."""
    patch = require_object(await read_json(request))
    read_only = [
        item(["body", name], "is set by the server and cannot be changed", "read_only")
        for name in SERVER_FIELDS
        if name in patch
    ]
    if read_only:
        raise ApiError(422, read_only)
    async with pool.acquire() as connection, connection.transaction():
        metric = await store.find_metric(connection, id_or_uid, include_deleted, for_update=True)
        if metric is None:
            raise _not_found(id_or_uid)
        current = {k: v for k, v in _shown(metric).items() if k not in SERVER_FIELDS}
        # The stored zone stands even if this host's zone data lacks it.
        definition = parse_definition({**current, **patch}, stored_zone=metric.timezone)
        frozen = immutable_changes(metric, definition)
        if frozen:
            raise ApiError(
                422,
                [
                    item(
                        ["body", name],
                        "is immutable after creation; create a new metric with a new uid",
                        "immutable",
                    )
                    for name in frozen
                ],
            )
        changed = changed_fields(metric, definition)
        if changed:
            kept = keep_stored_spelling(metric, definition)
            metric = await store.update_metric(connection, metric.id, kept)
            log.info("metric changed", uid=metric.uid, fields=",".join(changed), by=principal.name)
    return json_response(_shown(metric))


@router.delete(
    "/{idOrUid}",
    response_model=UsageMetric,
    responses=responses(401, 403, 404, 422),
    summary="Delete a usage metric (its values are kept)",
)
async def delete_usage_metric(principal: Admin, pool: Pool, id_or_uid: IdOrUid) -> Response:
    """Sets deletedAt: workers stop aggregating it, its values stay. Deleting a
    deleted metric changes nothing and answers the same (DELETE is idempotent)."""
    async with pool.acquire() as connection:
        metric = await store.find_metric(connection, id_or_uid, include_deleted=True)
        if metric is None:
            raise _not_found(id_or_uid)
        if metric.deleted_at is None:
            deleted = await store.delete_metric_by_id(connection, metric.id)
            if deleted is not None:
                log.info("metric deleted", uid=deleted.uid, by=principal.name)
            # None: another request deleted it meanwhile; answer it as it is now.
            metric = deleted or await store.find_metric(connection, metric.id, include_deleted=True)
    if metric is None:
        raise _not_found(id_or_uid)
    return json_response(_shown(metric))
