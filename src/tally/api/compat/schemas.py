"""The OpenAPI request bodies of the seed paths (documentation only: the body
is validated by the contract, `tally.contracts.metric.parse_metric`).

Fields a seed sends that Tally accepts and does not store are typed `{}`:
anything is accepted there (docs/api.md, "Seed compatibility")."""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"\S"}
_TEXT = {"type": "string", "maxLength": 4096}
_IGNORED = {"description": "Accepted and not stored (docs/api.md, Seed compatibility)."}


def _enum(*values: str) -> dict[str, Any]:
    return {"enum": [*values, None]}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field that Tally also takes as null (absent)."""
    return {"anyOf": [schema, {"type": "null"}]}


SQUAD_BODY: dict[str, Any] = {
    "title": "SquadMetricBody",
    "description": "Squad's create-metric body (seeds/000): an EXTERNAL LATEST metric whose "
    "uid is derived from title. currentValue, previousValue and timeseries are computed, "
    "never taken from a create. The server also checks: targetValue and targetOperator "
    "are given together.",
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "ownerId"],
    "properties": {
        "title": _NAME,
        "ownerId": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": r"\S",
            "description": "Kept in the metric's metadata.",
        },
        "description": _nullable(_TEXT),
        "unit": _nullable({"type": "string", "maxLength": 64}),
        "type": {
            "enum": [
                "engagement",
                "conversion",
                "revenue",
                "nps",
                "csat",
                "ces",
                "ratio",
                "custom",
            ],
            "default": "custom",
            "description": "Kept in the metric's metadata.",
        },
        "targetOperator": _enum("greater_than", "less_than", "equal_to"),
        "targetValue": _nullable({"type": "number"}),
        "targetDirection": _enum("up", "down"),
        "currentValue": _IGNORED,
        "previousValue": _IGNORED,
        "periodType": _enum("rolling", "calendar"),
        "periodValue": _enum(
            "day", "week", "month", "quarter", "year", "7-day", "30-day", "90-day"
        ),
        "timeseries": _IGNORED,
        "relatedOutcomes": {
            "type": "array",
            "maxItems": 100,
            "description": "Kept in the metric's metadata, as sent.",
        },
        "id": _IGNORED,
        "outcomeIds": _IGNORED,
    },
}

EXANTE_BODY: dict[str, Any] = {
    "title": "ExanteMetricBody",
    "description": "Exante's create-metric body (seeds/001): an EXTERNAL metric, LATEST if "
    "is_snapshot, else SUM.",
    "type": "object",
    "additionalProperties": False,
    "required": ["uid", "name"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,127}$"},
        "name": _NAME,
        "context_type": _enum("ORGANIZATION", "PARTY", "USER"),
        "description": _nullable(_TEXT),
        "formula": _nullable(_TEXT),
        "value_type": _enum("currency", "percentage", "days", "count", "ratio"),
        "storage_unit": _enum("raw", "cents"),
        "is_snapshot": {"type": "boolean"},
        "period_definition": _enum(
            "as_of_date", "trailing_30_days", "calendar_month", "month_to_date"
        ),
        "is_active": {"type": "boolean", "description": "false: created deleted."},
    },
}

CUORAL_BODY: dict[str, Any] = {
    "title": "CuoralMetricBody",
    "description": "Cuoral's create-metric-definition body (seeds/002): an EXTERNAL LATEST "
    "metric; its uid (metric_id) is derived from name.",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "data_type"],
    "properties": {
        "name": _NAME,
        "description": _nullable(_TEXT),
        "data_type": {"enum": ["NUMBER", "STRING"]},
    },
}

COMPONENTS = {
    "SquadMetricBody": SQUAD_BODY,
    "ExanteMetricBody": EXANTE_BODY,
    "CuoralMetricBody": CUORAL_BODY,
}
