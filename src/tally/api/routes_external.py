"""`POST /metrics/values/{context_type}/{entity_uid}`: one externally computed
value of a metric whose source is EXTERNAL (Exante's metric values).

The body and the answer are Exante's (snake_case); the value is stored as the
rollup row of its period in `tally.metric_values`, with an audit row
(`tally.store.external_values`). The compatibility path
`/api/metrics/values/...` (`tally.api.compat.exante`) answers the same in
Exante's envelope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from tally.api.auth import Admin
from tally.api.body import read_json, require_object
from tally.api.deps import Pool, body_ref, json_response
from tally.api.errors import ApiError, field_errors, responses
from tally.api.models import NO_NUL
from tally.contracts.external import (
    ExternalValueBody,
    ExternalValueError,
    check_against,
    context_of,
    definition_problems,
    parse_external_value,
)
from tally.contracts.metric import UID_PATTERN, ContextType, FieldError, UsageMetric
from tally.core.numbers import decimal_text
from tally.store import definitions
from tally.store import external_values as store
from tally.store.pool import Connection
from tally.telemetry.logs import Log

router = APIRouter(prefix="/metrics/values", tags=["external values"])
EXACT_FIELDS = frozenset({"value"})
log = Log("tally.api")


# A plain string, checked in `create_value` with the body, so that a refusal
# lists the path's context_type and every body field at once (FastAPI would
# refuse an enum before reading the body).
ContextTypeParam = Annotated[
    str,
    Path(
        alias="context_type",
        max_length=64,
        pattern=NO_NUL,
        description="ORGANIZATION, PARTY or USER; must be the metric's contextType.",
        json_schema_extra={"enum": [c.value for c in ContextType]},
    ),
]
EntityUid = Annotated[
    str,
    Path(
        alias="entity_uid",
        min_length=1,
        max_length=256,
        pattern=NO_NUL,
        description="The entity the value is for; stored as the row's customerId.",
    ),
]


def _refused(errors: list[FieldError]) -> ApiError:
    path = [e for e in errors if e.field.startswith("path.")]
    body = [e for e in errors if not e.field.startswith("path.")]
    return ApiError(
        422,
        [
            *field_errors(
                [FieldError(e.field[5:], e.reason, e.type) for e in path], ("path",)
            ).items,
            *field_errors(body).items,
        ],
    )


def json_number(value: Decimal | None) -> orjson.Fragment | None:
    """The exact number as a JSON number: its canonical decimal text written as
    it is (a float would round `12345678901234567890.1234`; orjson writes no
    Decimal). Values are bounded to 40 digits where they are written."""
    if value is None:
        return None
    return orjson.Fragment(decimal_text(value).encode())


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _answer(metric: UsageMetric, context_type: str, row: asyncpg.Record) -> dict[str, Any]:
    """Exante's metric value object."""
    stamp = _utc(row["updated_at"])
    value = row["value_text"] if row["value_text"] is not None else json_number(row["value"])
    return {
        "uid": str(row["external_uid"]),
        "metric_uid": metric.uid,
        "metric_name": metric.name,
        "period_definition": metric.period_definition,
        "context_type": context_type,
        "entity_uid": row["customer_id"],
        "time_unit": row["time_unit"],
        "timezone": row["value_timezone"],
        "metric_date": row["metric_date"].isoformat(),
        "storage_unit": (metric.storage_unit or "raw"),
        "value_type": metric.value_kind,
        "value": value,
        "created_at": stamp,
        "updated_at": stamp,
        "_metadata": row["metadata"],
        "period_start": _utc(row["period_start"]),
        "period_end": _utc(row["period_end"]),
    }


async def _metric(
    connection: Connection,
    body: ExternalValueBody | None,
    document: Mapping[str, Any],
    errors: list[FieldError],
) -> UsageMetric | None:
    """The metric the value names, or None with a refusal of metric_uid (unless
    its shape is already refused)."""
    uid = body.metric_uid if body is not None else document.get("metric_uid")
    if any(e.field == "metric_uid" for e in errors):
        return None
    if not isinstance(uid, str) or re.fullmatch(UID_PATTERN, uid) is None:
        return None
    metric = await definitions.find_metric(connection, uid, include_deleted=False)
    if metric is None:
        errors.append(FieldError("metric_uid", f"no metric has the uid {uid!r}", "not_found"))
    return metric


def _parsed(
    document: Mapping[str, Any], errors: list[FieldError]
) -> tuple[str | None, Decimal | int | float | str | None, date | None]:
    """The body's time_unit, value and metric_date when their own shape was not refused."""
    refused = {e.field for e in errors}
    unit = document.get("time_unit")
    value = document.get("value")
    good_unit = unit if "time_unit" not in refused and isinstance(unit, str) else None
    good_value = (
        value
        if "value" not in refused and "value" in document and not isinstance(value, bool)
        else None
    )
    day = document.get("metric_date")
    good_date = None
    if "metric_date" not in refused and isinstance(day, str):
        try:
            good_date = date.fromisoformat(day)
        except ValueError:
            good_date = None
    return good_unit, good_value, good_date


async def create_value(
    request: Request, principal: Admin, pool: Pool, context_type: str, entity_uid: str
) -> dict[str, Any]:
    """Check, store and answer one value; ApiError 422 (every field) or 409."""
    # `value` keeps its exact decimal text (never rounded through a double).
    document = require_object(await read_json(request, EXACT_FIELDS))
    errors: list[FieldError] = []
    if context_type not in ContextType.__members__:
        errors.append(
            FieldError("path.context_type", "must be ORGANIZATION, PARTY or USER", "enum")
        )
    body: ExternalValueBody | None = None
    try:
        body = parse_external_value(document)
    except ExternalValueError as exc:
        errors.extend(exc.errors)
    async with pool.acquire() as connection:
        metric = await _metric(connection, body, document, errors)
        if metric is not None and body is None:
            # The fields that parsed are still judged against the definition.
            errors.extend(definition_problems(metric, context_type, *_parsed(document, errors)))
        if errors or body is None or metric is None:
            raise _refused(errors)
        try:
            value = check_against(metric, context_type, body)
        except ExternalValueError as exc:
            raise _refused(exc.errors) from None
        row = await store.insert_value(
            connection,
            value,
            context_type=context_of(metric).value,
            entity_uid=entity_uid,
            principal=principal.name,
        )
    if row is None:
        raise ApiError.one(
            409,
            ["body", "metric_date"],
            f"{entity_uid!r} already has a value of {body.metric_uid!r} for the"
            f" {body.time_unit.value} of {body.metric_date.isoformat()}",
            "conflict",
        )
    log.info("external value created", uid=metric.uid, entity=entity_uid, by=principal.name)
    return _answer(metric, context_type, row)


@router.post(
    "/{context_type}/{entity_uid}",
    status_code=201,
    responses=responses(401, 403, 409, 413, 415, 422),
    openapi_extra=body_ref("ExternalValueBody", "One value computed elsewhere (Exante's shape)."),
    summary="Create one external value of an EXTERNAL metric",
)
async def create_external_value(
    request: Request,
    principal: Admin,
    pool: Pool,
    context_type: ContextTypeParam,
    entity_uid: EntityUid,
) -> Response:
    """201 with the value; 409 if the entity already has a value of that metric for
    that time unit and date's period; 422 naming every bad field, including a
    context_type that is not the metric's."""
    answer = await create_value(request, principal, pool, context_type, entity_uid)
    return json_response(answer, 201)
