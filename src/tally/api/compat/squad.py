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
from tally.api.errors import item, responses
from tally.api.models import NO_NUL
from tally.api.routes_external import json_number
from tally.contracts.metric import UsageMetric
from tally.contracts.metric_fields import metric_metadata_problem
from tally.core.numbers import contains_nul

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
        # Kept in the metric's `metadata` (`_adapt`): Tally has no owners or outcomes.
        "ownerId": "squad:ownerId",
        "type": "squad:type",
        "relatedOutcomes": "squad:relatedOutcomes",
    },
    required=("title", "ownerId"),
    ignored=frozenset(
        {
            "outcomeIds",
            "id",
            "currentValue",
            "previousValue",
            "timeseries",
        }
    ),
    fixed={"source": "EXTERNAL", "aggregationType": "LATEST"},
    name_field="title",
    # A JSON number read as a double would round it on the way in.
    exact=frozenset({"targetValue"}),
)

Segment = Annotated[str, Path(min_length=1, max_length=256, pattern=NO_NUL)]
# Squad's `type` (its page: "Category/type of the metric", default custom).
SQUAD_TYPES = ("engagement", "conversion", "revenue", "nps", "csat", "ces", "ratio", "custom")
MAX_OUTCOMES = 100
SEED_KEYS = ("ownerId", "type", "relatedOutcomes")


def _adapt(document: dict[str, Any], problems: list[dict[str, Any]]) -> None:
    """ownerId, type and relatedOutcomes -> the metric's `metadata`, checked here
    (the contract takes any JSON there), every bad one named at once."""
    kept: dict[str, Any] = {}
    for key in SEED_KEYS:
        if f"squad:{key}" in document:
            kept[key] = document.pop(f"squad:{key}")
    owner = kept.get("ownerId")
    if "ownerId" in kept and (not isinstance(owner, str) or not owner.strip() or len(owner) > 256):
        problems.append(
            item(
                ["body", "ownerId"],
                "must be a non-blank string of at most 256 characters",
                "string_type",
            )
        )
    kind = kept.setdefault("type", "custom")
    if kind not in SQUAD_TYPES:
        problems.append(item(["body", "type"], f"must be one of {', '.join(SQUAD_TYPES)}", "enum"))
    outcomes = kept.setdefault("relatedOutcomes", [])
    if not isinstance(outcomes, list) or len(outcomes) > MAX_OUTCOMES:
        problems.append(
            item(
                ["body", "relatedOutcomes"],
                f"must be an array of at most {MAX_OUTCOMES} items",
                "list_type",
            )
        )
    named = {tuple(p["loc"]) for p in problems}
    problems.extend(
        item(["body", key], "must not contain the NUL character", "nul")
        for key in SEED_KEYS
        if contains_nul(kept.get(key)) and ("body", key) not in named
    )
    if (problem := metric_metadata_problem(kept)) is not None:
        problems.append(item(["body", "relatedOutcomes"], problem, "metadata"))
    if not problems:  # else each is named here, not again as Tally's `metadata`
        document["metadata"] = kept


def squad_metric(metric: UsageMetric) -> dict[str, Any]:
    """Squad's metric object; the computed values are null until values are stored."""
    document = metric.to_document()
    kept = metric.metadata or {}
    return {
        "id": metric.id,
        "title": metric.name,
        # Null for a metric made elsewhere (POST /usage-metrics), which has no owner.
        "ownerId": kept.get("ownerId"),
        "createdAt": stamp(metric.created_at),
        "updatedAt": stamp(metric.updated_at),
        "description": metric.description,
        "unit": metric.unit,
        "type": kept.get("type", "custom"),
        "targetOperator": document.get("targetOperator"),
        # Squad writes a JSON number; Tally's own API writes the exact decimal text.
        "targetValue": json_number(metric.target_value),
        "targetDirection": document.get("targetDirection", "up"),
        "currentValue": None,
        "previousValue": None,
        "periodType": document.get("periodType"),
        "periodValue": document.get("periodValue"),
        "timeseries": [],
        "relatedOutcomes": kept.get("relatedOutcomes", []),
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
    metric = await create_metric(SQUAD, request, principal, pool, adapt=_adapt)
    return json_response({"data": squad_metric(metric)}, 200)
