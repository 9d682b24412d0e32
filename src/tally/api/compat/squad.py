"""Squad's "Create a new metric" (seeds/000): a KPI with targets and no events.

Squad's metric is an EXTERNAL LATEST metric; its uid is derived from `title`.
currentValue, previousValue and timeseries are read-only here: computed from
stored values by the usage summary, never taken from a create (docs/decisions.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from tally.api.auth import Admin
from tally.api.compat import Seed, create_metric, stamp
from tally.api.deps import Pool, body_ref, json_response
from tally.api.errors import responses
from tally.api.models import NO_NUL
from tally.api.routes_external import json_number
from tally.contracts.metric import UsageMetric

router = APIRouter(tags=["seed compatibility"])

SQUAD = Seed(
    fields={
        "title": "name",
        "description": "description",
        "unit": "unit",
        "targetOperator": "targetOperator",
        "targetValue": "targetValue",
        "targetDirection": "targetDirection",
        "periodType": "periodType",
        "periodValue": "periodValue",
    },
    required=("title", "ownerId"),
    ignored=frozenset(
        {
            "ownerId",
            "type",
            "relatedOutcomes",
            "outcomeIds",
            "id",
            "currentValue",
            "previousValue",
            "timeseries",
        }
    ),
    fixed={"source": "EXTERNAL", "aggregationType": "LATEST"},
    name_field="title",
)

Segment = Annotated[str, Path(min_length=1, max_length=256, pattern=NO_NUL)]


def squad_metric(metric: UsageMetric) -> dict[str, Any]:
    """Squad's metric object; the computed values are null until values are stored."""
    document = metric.to_document()
    return {
        "id": metric.id,
        "title": metric.name,
        "createdAt": stamp(metric.created_at),
        "updatedAt": stamp(metric.updated_at),
        "description": metric.description,
        "unit": metric.unit,
        "targetOperator": document.get("targetOperator"),
        # Squad writes a JSON number; Tally's own API writes the exact decimal text.
        "targetValue": json_number(metric.target_value),
        "targetDirection": document.get("targetDirection", "up"),
        "currentValue": None,
        "previousValue": None,
        "periodType": document.get("periodType"),
        "periodValue": document.get("periodValue"),
        "timeseries": [],
        "uid": metric.uid,
    }


@router.post(
    "/organisations/{orgId}/workspaces/{workspaceId}/metrics",
    status_code=200,
    responses=responses(401, 403, 409, 413, 415, 422),
    openapi_extra=body_ref("SquadMetricBody", "Squad's create-metric body."),
    summary="Squad: create a metric (an EXTERNAL metric with targets)",
)
async def squad_create_metric(
    request: Request,
    principal: Admin,
    pool: Pool,
    org_id: Annotated[Segment, Path(alias="orgId")],
    workspace_id: Annotated[Segment, Path(alias="workspaceId")],
) -> Response:
    """Squad's body; `{"data": metric}`. orgId and workspaceId are accepted and not
    stored (one Tally deployment is one workspace)."""
    metric = await create_metric(SQUAD, request, principal, pool)
    return json_response({"data": squad_metric(metric)}, 200)
