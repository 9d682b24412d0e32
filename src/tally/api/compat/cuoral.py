"""Cuoral's "Create Metric Definition" (seeds/002), at the page's own path.

A Cuoral metric holds a value per customer set elsewhere: an EXTERNAL LATEST
metric whose valueType is `data_type`; its uid (Cuoral's metric_id) is derived
from `name`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tally.api.auth import Admin
from tally.api.compat import Seed, create_metric, stamp
from tally.api.deps import Pool, body_ref, json_response
from tally.api.errors import responses
from tally.contracts.metric import UsageMetric

router = APIRouter(tags=["seed compatibility"])

CUORAL = Seed(
    fields={"name": "name", "description": "description", "data_type": "valueType"},
    required=("name", "data_type"),
    fixed={"source": "EXTERNAL", "aggregationType": "LATEST", "timeUnits": ["day"]},
)


def cuoral_metric(metric: UsageMetric) -> dict[str, Any]:
    return {
        "id": metric.id,
        "metric_id": metric.uid,
        "name": metric.name,
        "description": metric.description,
        "data_type": metric.value_type.value,
        "time_created": stamp(metric.created_at),
        "time_updated": stamp(metric.updated_at),
    }


@router.post(
    "/external/v1/external/v1/customers/metrics",
    status_code=201,
    responses=responses(401, 403, 409, 413, 415, 422),
    openapi_extra=body_ref("CuoralMetricBody", "Cuoral's create-metric-definition body."),
    summary="Cuoral: create a metric definition",
)
async def cuoral_create_metric(request: Request, principal: Admin, pool: Pool) -> Response:
    """Cuoral's body and answer (201); the path is the page's, prefix twice."""
    metric = await create_metric(CUORAL, request, principal, pool)
    return json_response(cuoral_metric(metric), 201)
