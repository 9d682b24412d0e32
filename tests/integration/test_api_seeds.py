"""Each seed page's own example request (/work/shared/seeds, copied verbatim),
sent to the real app over a real PostgreSQL, gets the answer the page
documents: status, envelope and fields (docs/api.md, "Seed compatibility")."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_api_support import ADMIN, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

# seeds/000 (Squad), verbatim.
SQUAD: dict[str, Any] = {
    "title": "Daily Active Users",
    "ownerId": "<string>",
    "description": "Number of unique users who performed any action in the last 24 hours",
    "unit": "users",
    "type": "custom",
    "targetOperator": "greater_than",
    "targetValue": 100,
    "targetDirection": "up",
    "currentValue": 150,
    "previousValue": 140,
    "periodType": "calendar",
    "periodValue": "month",
    "timeseries": [{"date": "2023-11-07T05:31:56Z", "value": 85}],
    "relatedOutcomes": ["<unknown>"],
    "id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
    "outcomeIds": ["7b9e5d2c-f314-48a9-be56-9843a2f6c019"],
}
# seeds/001 (Exante, create metric), verbatim.
EXANTE_METRIC: dict[str, Any] = {
    "uid": "party_dso",
    "name": "Party DSO",
    "context_type": "ORGANIZATION",
    "description": "<string>",
    "formula": "<string>",
    "value_type": "count",
    "storage_unit": "raw",
    "is_snapshot": False,
    "period_definition": "as_of_date",
    "is_active": True,
}
# seeds/002 (Cuoral), verbatim.
CUORAL: dict[str, Any] = {
    "name": "Customer Tier",
    "description": "The service level tier the customer is subscribed to.",
    "data_type": "STRING",
}
# seeds/003 (Sequence), verbatim: SUM without aggregationProperty, GROUPED
# without groupingProperty (the page's own response has both).
SEQUENCE: dict[str, Any] = {
    "aggregationType": "SUM",
    "eventType": "message_sent",
    "metricType": "GROUPED",
    "name": "Total length of sent messages.",
}
# seeds/004 (Exante, create metric value), verbatim but for metric_uid, which
# the page leaves as "<string>" (not a uid): it names the metric created above.
EXANTE_VALUE: dict[str, Any] = {
    "metric_uid": "<string>",
    "time_unit": "day",
    "metric_date": "2026-03-15",
    "value": 350000000,
    "timezone": "America/Los_Angeles",
    "_metadata": {},
}
ENTITY = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        yield opened


async def test_squad_example_creates_an_external_metric_with_targets(api: Api) -> None:
    path = "/organisations/org_1/workspaces/ws_1/metrics"
    response = await api.client.post(path, json=SQUAD, headers=ADMIN)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert UUID.match(data["id"])
    assert data["id"] != SQUAD["id"]
    assert STAMP.match(data["createdAt"])
    assert STAMP.match(data["updatedAt"])
    for field in ("title", "description", "unit", "targetOperator", "targetValue"):
        assert data[field] == SQUAD[field], field
    assert data["targetDirection"] == "up"
    assert (data["periodType"], data["periodValue"]) == ("calendar", "month")
    # Computed from stored values, never taken from a create: none are stored yet.
    assert (data["currentValue"], data["previousValue"], data["timeseries"]) == (None, None, [])
    stored = (await api.client.get("/usage-metrics/daily_active_users", headers=READ)).json()
    assert stored["source"] == "EXTERNAL"
    assert stored["aggregationType"] == "LATEST"
    assert "eventType" not in stored
    # Tally's own API writes the exact decimal text; Squad's path a number.
    assert (stored["targetOperator"], stored["targetValue"]) == ("greater_than", "100")
    # The targets are mutable.
    changed = await api.client.patch(
        "/usage-metrics/daily_active_users",
        json={"targetValue": 120.5, "targetDirection": "down"},
        headers=ADMIN,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["targetValue"], changed.json()["targetDirection"]) == ("120.5", "down")
    lone = await api.client.patch(
        "/usage-metrics/daily_active_users",
        json={"targetOperator": None},
        headers=ADMIN,
    )
    assert lone.status_code == 422
    assert error_locs(lone) == [["body", "targetValue"]]
    again = await api.client.post(path, json=SQUAD, headers=ADMIN)
    assert again.status_code == 409
    assert "daily_active_users" in again.json()["detail"][0]["msg"]
    assert error_locs(again) == [["body", "title"]]


async def test_squad_refusal_lists_every_bad_field_in_squads_names(api: Api) -> None:
    body = {**SQUAD, "targetOperator": "about", "periodValue": "fortnight"}
    del body["ownerId"]
    response = await api.client.post(
        "/organisations/o/workspaces/w/metrics", json=body, headers=ADMIN
    )
    assert response.status_code == 422
    assert sorted(error_locs(response)) == [
        ["body", "ownerId"],
        ["body", "periodValue"],
        ["body", "targetOperator"],
    ]


async def test_exante_example_creates_a_metric_in_exantes_envelope(api: Api) -> None:
    response = await api.client.post("/api/metrics", json=EXANTE_METRIC, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["status"], answer["status_code"]) == ("success", 200)
    assert isinstance(answer["message"], str)
    data = answer["data"]
    for field, value in EXANTE_METRIC.items():
        assert data[field] == value, field
    assert STAMP.match(data["created_at"])
    assert STAMP.match(data["updated_at"])
    stored = (await api.client.get("/usage-metrics/party_dso", headers=READ)).json()
    assert (stored["source"], stored["aggregationType"]) == ("EXTERNAL", "SUM")
    assert (stored["valueKind"], stored["contextType"]) == ("count", "ORGANIZATION")
    # Immutable where Exante says so.
    changed = await api.client.patch(
        "/usage-metrics/party_dso",
        json={"contextType": "USER", "valueKind": "currency"},
        headers=ADMIN,
    )
    assert changed.status_code == 422
    assert sorted(error_locs(changed)) == [["body", "contextType"], ["body", "valueKind"]]
    assert {e["type"] for e in changed.json()["detail"]} == {"immutable"}
    duplicate = await api.client.post("/api/metrics", json=EXANTE_METRIC, headers=ADMIN)
    assert duplicate.status_code == 409
    assert error_locs(duplicate) == [["body", "uid"]]


async def test_exante_snapshot_is_latest_and_refusals_name_exantes_fields(api: Api) -> None:
    snapshot = {**EXANTE_METRIC, "uid": "dso", "is_snapshot": True, "value_type": "currency"}
    response = await api.client.post("/api/metrics", json=snapshot, headers=ADMIN)
    assert response.status_code == 200, response.text
    stored = (await api.client.get("/usage-metrics/dso", headers=READ)).json()
    assert stored["aggregationType"] == "LATEST"
    assert stored["isSnapshot"] is True
    bad = {**EXANTE_METRIC, "uid": "Bad Uid", "value_type": "money", "context_type": "TEAM"}
    refused = await api.client.post("/api/metrics", json=bad, headers=ADMIN)
    assert refused.status_code == 422
    assert sorted(error_locs(refused)) == [
        ["body", "context_type"],
        ["body", "uid"],
        ["body", "value_type"],
    ]


async def test_cuoral_example_creates_a_string_metric(api: Api) -> None:
    path = "/external/v1/external/v1/customers/metrics"
    response = await api.client.post(path, json=CUORAL, headers=ADMIN)
    assert response.status_code == 201, response.text
    data = response.json()
    assert set(data) == {
        "id",
        "metric_id",
        "name",
        "description",
        "data_type",
        "time_created",
        "time_updated",
    }
    assert data["metric_id"] == "customer_tier"
    assert (data["name"], data["description"], data["data_type"]) == (
        CUORAL["name"],
        CUORAL["description"],
        "STRING",
    )
    assert STAMP.match(data["time_created"])
    refused = await api.client.post(
        path, json={"description": 5, "data_type": "BLOB"}, headers=ADMIN
    )
    assert refused.status_code == 422
    body = refused.json()
    assert set(body) == {"detail"}
    assert all(set(entry) == {"loc", "msg", "type"} for entry in body["detail"])
    assert sorted(error_locs(refused)) == [
        ["body", "data_type"],
        ["body", "description"],
        ["body", "name"],
    ]


async def test_sequence_example_is_refused_naming_both_missing_fields(api: Api) -> None:
    response = await api.client.post("/usage-metrics", json=SEQUENCE, headers=ADMIN)
    assert response.status_code == 422
    assert sorted(error_locs(response)) == [
        ["body", "aggregationProperty"],
        ["body", "groupingProperty"],
    ]
    assert "uid" not in str(response.json())  # no uid required: it is derived


async def test_sequence_body_without_uid_gets_a_stable_uid_and_409_on_a_collision(
    api: Api,
) -> None:
    # The page's own response shows the two fields its example lacks.
    body = {**SEQUENCE, "aggregationProperty": "message_length", "groupingProperty": "channel"}
    response = await api.client.post("/usage-metrics", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["uid"] == "total_length_of_sent_messages"
    assert UUID.match(created["id"])
    for field, value in body.items():
        assert created[field] == value, field
    assert created["propertyFilters"] == {}
    again = await api.client.post("/usage-metrics", json=body, headers=ADMIN)
    assert again.status_code == 409
    assert "'total_length_of_sent_messages'" in again.json()["detail"][0]["msg"]


async def test_exante_value_example_in_the_envelope_then_409(api: Api) -> None:
    created = await api.client.post("/api/metrics", json=EXANTE_METRIC, headers=ADMIN)
    assert created.status_code == 200
    body = {**EXANTE_VALUE, "metric_uid": "party_dso"}
    path = f"/api/metrics/values/ORGANIZATION/{ENTITY}"
    response = await api.client.post(path, json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["status"], answer["status_code"]) == ("success", 200)
    data = answer["data"]
    assert UUID.match(data["uid"])
    expected = {
        "metric_uid": "party_dso",
        "metric_name": "Party DSO",
        "period_definition": "as_of_date",
        "context_type": "ORGANIZATION",
        "entity_uid": ENTITY,
        "time_unit": "day",
        "timezone": "America/Los_Angeles",
        "metric_date": "2026-03-15",
        "storage_unit": "raw",
        "value_type": "count",
        "value": 350000000,
        "_metadata": {},
    }
    for field, value in expected.items():
        assert data[field] == value, field
    assert STAMP.match(data["created_at"])
    assert STAMP.match(data["updated_at"])
    duplicate = await api.client.post(path, json=body, headers=ADMIN)
    assert duplicate.status_code == 409
    assert error_locs(duplicate) == [["body", "metric_date"]]


@pytest.mark.parametrize(
    ("path", "body", "extra"),
    [
        (
            "/external/v1/external/v1/customers/metrics",
            {
                **CUORAL,
                "data_type": "NUMBER",
                "source": "EVENTS",
                "eventType": "api_call",
                "aggregationType": "COUNT",
                "timeUnits": ["hour"],
            },
            ["aggregationType", "eventType", "source", "timeUnits"],
        ),
        (
            "/api/metrics",
            {
                **EXANTE_METRIC,
                "source": "EVENTS",
                "eventType": "payment",
                "aggregationProperty": "amount",
            },
            ["aggregationProperty", "eventType", "source"],
        ),
        (
            "/organisations/o/workspaces/w/metrics",
            {**SQUAD, "uid": "Hourly!", "timeUnits": ["hour"]},
            ["timeUnits", "uid"],
        ),
    ],
    ids=["cuoral", "exante", "squad"],
)
async def test_a_seed_path_refuses_every_key_that_is_not_the_seeds(
    api: Api, path: str, body: dict[str, Any], extra: list[str]
) -> None:
    response = await api.client.post(path, json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert sorted(error_locs(response)) == [["body", key] for key in extra]
    assert {e["type"] for e in response.json()["detail"]} == {"extra_forbidden"}
    assert await api.sql("SELECT 1 FROM tally.metrics") == []


async def test_a_refused_name_is_one_error_on_the_name_not_also_on_its_derived_uid(
    api: Api,
) -> None:
    response = await api.client.post(
        "/organisations/o/workspaces/w/metrics", json={**SQUAD, "title": "   "}, headers=ADMIN
    )
    assert response.status_code == 422
    assert error_locs(response) == [["body", "title"]]
    assert response.json()["detail"][0]["type"] != "missing"  # it was sent


async def test_restating_exantes_defaults_is_not_a_change(api: Api) -> None:
    body = {**EXANTE_METRIC, "context_type": None, "storage_unit": None}
    created = await api.client.post("/api/metrics", json=body, headers=ADMIN)
    assert created.status_code == 200, created.text
    same = await api.client.patch(
        "/usage-metrics/party_dso",
        json={"contextType": "ORGANIZATION", "storageUnit": "raw"},
        headers=ADMIN,
    )
    assert same.status_code == 200, same.text
    other = await api.client.patch(
        "/usage-metrics/party_dso", json={"storageUnit": "cents"}, headers=ADMIN
    )
    assert other.status_code == 422
    assert error_locs(other) == [["body", "storageUnit"]]


async def test_squad_refuses_a_default_period_the_summary_cannot_serve(api: Api) -> None:
    body = {**SQUAD, "periodType": "calendar", "periodValue": "7-day"}
    response = await api.client.post(
        "/organisations/o/workspaces/w/metrics", json=body, headers=ADMIN
    )
    assert response.status_code == 422
    assert error_locs(response) == [["body", "periodValue"]]
    rolling = {**body, "periodType": "rolling"}
    created = await api.client.post(
        "/organisations/o/workspaces/w/metrics", json=rolling, headers=ADMIN
    )
    assert created.status_code == 200, created.text


@pytest.mark.parametrize("field", ["period_definition", "value_type"])
@pytest.mark.parametrize("value", [{"a": 1}, ["month_to_date"], 7])
async def test_exante_refuses_any_json_where_a_name_belongs(
    api: Api, field: str, value: Any
) -> None:
    response = await api.client.post(
        "/api/metrics", json={**EXANTE_METRIC, field: value}, headers=ADMIN
    )
    assert response.status_code == 422, response.text
    assert error_locs(response) == [["body", field]]


async def test_exact_numbers_are_answered_exactly(api: Api) -> None:
    exact = "12345678901234567890.1234567890123456789"
    body = {**SQUAD, "targetValue": exact}
    response = await api.client.post(
        "/organisations/o/workspaces/w/metrics", json=body, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    answer = json.loads(response.text, parse_float=Decimal)
    assert answer["data"]["targetValue"] == Decimal(exact)
    stored = json.loads(
        (await api.client.get(f"/usage-metrics/{answer['data']['uid']}", headers=READ)).text
    )
    assert Decimal(stored["targetValue"]) == Decimal(exact)
