"""The checked-in OpenAPI document is the one the app generates."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from tally.api.app import create_app
from tally.api.openapi_document import CROSS_FIELD_RULES, render
from tally.config import Settings

CHECKED_IN = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"


def test_schemas_openapi_json_matches_the_app() -> None:
    generated = render(create_app(Settings()).openapi())
    stored = CHECKED_IN.read_text(encoding="utf-8")
    if json.loads(stored) != json.loads(generated):
        diff = "".join(
            difflib.unified_diff(
                stored.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                "schemas/openapi.json",
                "generated",
                n=2,
            )
        )
        raise AssertionError(
            "schemas/openapi.json is out of date; regenerate it with\n"
            "    .venv/bin/python -m tally.api.openapi > schemas/openapi.json\n"
            "and review the change:\n" + diff[:6000]
        )


def test_every_operation_but_health_needs_a_token_and_documents_its_errors() -> None:
    document = create_app(Settings()).openapi()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            statuses = set(operation["responses"])
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation
                continue
            assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            assert {"401", "403", "422"} <= statuses, (method, path)
            for status in statuses - {"200", "201", "202"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}


def test_request_bodies_are_the_contract_models() -> None:
    document = create_app(Settings()).openapi()
    schemas = document["components"]["schemas"]
    create = document["paths"]["/usage-metrics"]["post"]["requestBody"]
    assert create["content"]["application/json"]["schema"]["$ref"].endswith(
        "/UsageMetricDefinition"
    )
    # uid is derived from name when absent; eventType is not given for an EXTERNAL metric.
    assert schemas["UsageMetricDefinition"]["required"] == ["name", "aggregationType"]
    assert set(schemas["UsageMetricPatch"]["properties"]) == {
        "name",
        "description",
        "unit",
        "deletedAt",
        "targetOperator",
        "targetValue",
        "targetDirection",
        "formula",
        "periodType",
        "periodValue",
        "metadata",
    }
    value = schemas["MetricValue"]["properties"]["value"]
    # A decimal string, or null for a STRING LATEST (its text is valueText).
    assert [kind["type"] for kind in value["anyOf"]] == ["string", "null"]
    assert "value" in schemas["MetricValue"]["required"]
    assert "valueText" not in schemas["MetricValue"]["required"]


def test_the_cross_field_rules_are_the_json_schema_contracts() -> None:
    contract = json.loads((CHECKED_IN.parent / "usage-metric.schema.json").read_text())
    assert contract["allOf"] == CROSS_FIELD_RULES
