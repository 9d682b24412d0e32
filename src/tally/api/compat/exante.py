"""Exante's "Create metric" (seeds/001) and "Create metric value" (seeds/004),
at the pages' paths, answered in Exante's envelope `{status, status_code,
message, data}`. Refusals keep Tally's error shape (docs/decisions.md).

An Exante metric is EXTERNAL; a snapshot is LATEST, and so is a metric whose
values overlap (trailing_30_days, month_to_date, calendar_month) or do not add up
(percentage, ratio, days); any other is SUM. It holds day values: an EXTERNAL
metric has exactly one time unit (docs/decisions.md, "External values: one time
unit"); a month or year metric is created through POST /usage-metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tally.api.auth import Admin
from tally.api.compat import Seed, create_metric, stamp
from tally.api.deps import Pool, body_ref, json_response
from tally.api.errors import item, responses
from tally.api.routes_external import ContextTypeParam, EntityUid, create_value
from tally.contracts.metric import NON_ADDITIVE_KINDS, OVERLAPPING_PERIODS, UsageMetric

router = APIRouter(prefix="/api/metrics", tags=["seed compatibility"])

EXANTE = Seed(
    fields={
        "uid": "uid",
        "name": "name",
        "context_type": "contextType",
        "description": "description",
        "formula": "formula",
        "value_type": "valueKind",
        "storage_unit": "storageUnit",
        "is_snapshot": "isSnapshot",
        "period_definition": "periodDefinition",
        "is_active": "deletedAt",
    },
    required=("uid", "name"),
    fixed={
        "source": "EXTERNAL",
        "contextType": "ORGANIZATION",
        "valueKind": "count",
        "storageUnit": "raw",
        "isSnapshot": False,
        "timeUnits": ["day"],
    },
)


def envelope(data: dict[str, Any], message: str) -> dict[str, Any]:
    return {"status": "success", "status_code": 200, "message": message, "data": data}


def exante_metric(metric: UsageMetric) -> dict[str, Any]:
    return {
        "uid": metric.uid,
        "name": metric.name,
        "context_type": metric.context_type,
        "description": metric.description,
        "formula": metric.formula,
        "value_type": metric.value_kind,
        "storage_unit": metric.storage_unit,
        "is_snapshot": metric.is_snapshot,
        "period_definition": metric.period_definition,
        "is_active": metric.deleted_at is None,
        "created_at": stamp(metric.created_at),
        "updated_at": stamp(metric.updated_at),
    }


@router.post(
    "",
    status_code=200,
    responses=responses(401, 403, 409, 413, 415, 422),
    openapi_extra=body_ref("ExanteMetricBody", "Exante's create-metric body."),
    summary="Exante: create a metric (an EXTERNAL metric)",
)
async def exante_create_metric(request: Request, principal: Admin, pool: Pool) -> Response:
    """Exante's body; `is_active: false` creates it deleted (deletedAt now)."""
    metric = await create_metric(EXANTE, request, principal, pool, adapt=_adapt)
    return json_response(envelope(exante_metric(metric), "metric created"), 200)


def _adapt(document: dict[str, Any], problems: list[dict[str, Any]]) -> None:
    """is_active (renamed deletedAt by the field map) -> deletedAt; snapshot, or
    values that must not be summed -> LATEST."""
    if "deletedAt" in document:
        active = document.pop("deletedAt")
        if active is False:
            document["deletedAt"] = datetime.now(UTC).isoformat()
        elif active is not True:
            problems.append(item(["body", "is_active"], "must be a boolean", "bool_type"))
    # Any JSON may stand where a name belongs (the contract names it): compare texts only.
    period, kind = document.get("periodDefinition"), document.get("valueKind")
    latest = (
        document.get("isSnapshot") is True
        or (isinstance(period, str) and period in OVERLAPPING_PERIODS)
        or (isinstance(kind, str) and kind in NON_ADDITIVE_KINDS)
    )
    document["aggregationType"] = "LATEST" if latest else "SUM"


@router.post(
    "/values/{context_type}/{entity_uid}",
    status_code=200,
    responses=responses(401, 403, 409, 413, 415, 422),
    openapi_extra=body_ref("ExternalValueBody", "One value computed elsewhere (Exante's shape)."),
    summary="Exante: create one metric value (of an EXTERNAL metric)",
)
async def exante_create_metric_value(
    request: Request,
    principal: Admin,
    pool: Pool,
    context_type: ContextTypeParam,
    entity_uid: EntityUid,
) -> Response:
    """As POST /metrics/values/{context_type}/{entity_uid}, in Exante's envelope (200)."""
    answer = await create_value(request, principal, pool, context_type, entity_uid)
    return json_response(envelope(answer, "metric value created"), 200)
