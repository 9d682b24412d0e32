"""The OpenAPI document: FastAPI's, plus the request bodies routes read themselves.

`api/app.py` builds and serves it from here; `python -m tally.api.openapi >
schemas/openapi.json` (`tally.api.openapi`) regenerates the checked-in copy, and
tests/unit/test_api_openapi.py fails when the two drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from tally import __version__
from tally.api.compat import schemas as compat_schemas
from tally.api.models import AdjustmentRequest
from tally.api.routes_backfill import StartBackfillRequest
from tally.contracts.external import ExternalValueBody
from tally.contracts.metric import MUTABLE_FIELDS, UsageMetricDefinition, field_alias

DESCRIPTION = """\
Usage metric definitions and their values (rollups), in the shape of Sequence's
usage-metric API and Exante's metric definitions and values. Every endpoint but
`/healthz` and `/readyz` needs a bearer token: `read` for GETs, `admin` for the
rest. Errors are `{"detail": [{"loc", "msg", "type"}]}`. Decimals are strings.
See docs/api.md."""

_SERVER_RULES = (
    " Rules the server checks beyond this schema (422 names the field): every "
    "propertiesToNegate entry is a key of propertyFilters; timezone is an IANA name."
)

# The cross-field rules of the contract, as schemas/usage-metric.schema.json
# states them (a unit test keeps the two equal).
CROSS_FIELD_RULES: list[dict[str, Any]] = [
    {
        "if": {
            "anyOf": [
                {
                    "properties": {"aggregationType": {"const": "COUNT"}},
                    "required": ["aggregationType"],
                },
                {"properties": {"source": {"const": "EXTERNAL"}}, "required": ["source"]},
            ]
        },
        "then": {"properties": {"aggregationProperty": {"type": "null"}}},
        "else": {
            "required": ["aggregationProperty"],
            "properties": {"aggregationProperty": {"type": "string"}},
        },
    },
    {
        "if": {"properties": {"metricType": {"const": "GROUPED"}}, "required": ["metricType"]},
        "then": {
            "oneOf": [
                {
                    "required": ["groupingProperty"],
                    "properties": {
                        "groupingProperty": {"type": "string"},
                        "groupingProperties": {"type": "null"},
                    },
                },
                {
                    "required": ["groupingProperties"],
                    "properties": {
                        "groupingProperties": {"type": "array"},
                        "groupingProperty": {"type": "null"},
                    },
                },
            ]
        },
        "else": {
            "properties": {
                "groupingProperty": {"type": "null"},
                "groupingProperties": {"type": "null"},
            }
        },
    },
    {
        "if": {"properties": {"valueType": {"const": "STRING"}}, "required": ["valueType"]},
        "then": {
            "required": ["aggregationType"],
            "properties": {"aggregationType": {"const": "LATEST"}},
        },
    },
    {
        "if": {"properties": {"source": {"const": "EXTERNAL"}}, "required": ["source"]},
        "then": {
            "properties": {
                "eventType": {"type": "null"},
                "aggregationType": {"enum": ["SUM", "MAX", "MIN", "LATEST"]},
                "metricType": {"enum": ["SIMPLE", None]},
                "propertyFilters": {"maxProperties": 0},
                "presenceFilters": {"maxProperties": 0},
                "propertiesToNegate": {"maxItems": 0},
            }
        },
        "else": {"required": ["eventType"], "properties": {"eventType": {"type": "string"}}},
    },
    {
        "if": {"properties": {"isSnapshot": {"const": True}}, "required": ["isSnapshot"]},
        "then": {"properties": {"aggregationType": {"const": "LATEST"}}},
    },
]


def _body_components() -> dict[str, Any]:
    _, top = models_json_schema(
        [
            (UsageMetricDefinition, "validation"),
            (AdjustmentRequest, "validation"),
            (ExternalValueBody, "validation"),
            (StartBackfillRequest, "validation"),
        ],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    components: dict[str, Any] = top["$defs"]
    components.update(compat_schemas.COMPONENTS)
    definition = components["UsageMetricDefinition"]
    definition["description"] += _SERVER_RULES
    definition["allOf"] = CROSS_FIELD_RULES
    properties = definition["properties"]
    # What the contract's validators add to the field types (as in
    # schemas/usage-metric.schema.json): a name is not blank, lists hold no repeats.
    properties["name"]["pattern"] = r"\S"
    # POST /usage-metrics derives a uid from the name when there is none (Sequence).
    definition["required"] = [name for name in definition["required"] if name != "uid"]
    properties["uid"]["description"] = "Optional on create: derived from name when absent."
    properties["timeUnits"]["uniqueItems"] = True
    properties["propertiesToNegate"]["uniqueItems"] = True
    mutable = [field_alias(f) for f in MUTABLE_FIELDS]
    components["UsageMetricPatch"] = {
        "title": "UsageMetricPatch",
        "description": "The mutable fields of a usage metric; null clears description, "
        "unit and deletedAt.",
        "type": "object",
        "additionalProperties": False,
        "properties": {name: properties[name] for name in mutable},
    }
    return components


def build(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title="Tally",
        version=__version__,
        description=DESCRIPTION,
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in _body_components().items():
        if name in schemas and schemas[name] != schema:
            raise RuntimeError(f"two different OpenAPI schemas are named {name}")
        schemas[name] = schema
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
