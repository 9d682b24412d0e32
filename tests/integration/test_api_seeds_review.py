"""The seed paths after the issue-14 review: Squad's answer holds every field
its page documents (ownerId, type, relatedOutcomes, stored in the metric's
metadata), and the summary defaults to a metric's stored period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_api_seeds import EXANTE_METRIC, SQUAD
from tests.integration.test_api_support import ADMIN, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

SQUAD_PATH = "/organisations/org_1/workspaces/ws_1/metrics"
# The keys of the page's documented response (seeds/000), and Tally's uid.
SQUAD_ANSWER_KEYS = {
    "id",
    "title",
    "ownerId",
    "createdAt",
    "updatedAt",
    "description",
    "unit",
    "type",
    "targetOperator",
    "targetValue",
    "targetDirection",
    "currentValue",
    "previousValue",
    "periodType",
    "periodValue",
    "timeseries",
    "relatedOutcomes",
    "uid",
}


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        yield opened


async def test_squads_answer_holds_owner_type_and_outcomes_as_stored(api: Api) -> None:
    response = await api.client.post(SQUAD_PATH, json=SQUAD, headers=ADMIN)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert set(data) == SQUAD_ANSWER_KEYS
    assert (data["ownerId"], data["type"], data["relatedOutcomes"]) == (
        "<string>",
        "custom",
        ["<unknown>"],
    )
    stored = (await api.client.get("/usage-metrics/daily_active_users", headers=READ)).json()
    assert stored["metadata"] == {
        "ownerId": "<string>",
        "type": "custom",
        "relatedOutcomes": ["<unknown>"],
    }
    # The page's defaults: type custom; relatedOutcomes none.
    bare = {"title": "Churn", "ownerId": "user_1"}
    plain = await api.client.post(SQUAD_PATH, json=bare, headers=ADMIN)
    assert plain.status_code == 200, plain.text
    assert (plain.json()["data"]["type"], plain.json()["data"]["relatedOutcomes"]) == ("custom", [])
    # metadata is mutable through Tally's own API.
    changed = await api.client.patch(
        "/usage-metrics/churn", json={"metadata": {"ownerId": "user_2"}}, headers=ADMIN
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["metadata"] == {"ownerId": "user_2"}


async def test_squads_owner_type_and_outcomes_are_checked_all_at_once(api: Api) -> None:
    body = {**SQUAD, "ownerId": 5, "type": "weird", "relatedOutcomes": "x", "periodValue": "y"}
    response = await api.client.post(SQUAD_PATH, json=body, headers=ADMIN)
    assert response.status_code == 422
    assert sorted(error_locs(response)) == [
        ["body", "ownerId"],
        ["body", "periodValue"],
        ["body", "relatedOutcomes"],
        ["body", "type"],
    ]
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    nested = await api.client.post(
        SQUAD_PATH, json={**SQUAD, "relatedOutcomes": [deep]}, headers=ADMIN
    )
    assert nested.status_code == 422
    assert error_locs(nested) == [["body", "relatedOutcomes"]]
    nul = await api.client.post(SQUAD_PATH, json={**SQUAD, "ownerId": "a\x00b"}, headers=ADMIN)
    assert nul.status_code == 422
    assert error_locs(nul) == [["body", "ownerId"]]


async def summary(api: Api, uid: str, **params: Any) -> Any:
    response = await api.client.get(
        f"/usage-metrics/{uid}/summary",
        params={"customerId": "acme", "asOf": "2026-03-15", **params},
        headers=READ,
    )
    return response


async def test_the_summary_defaults_to_the_metrics_stored_period(api: Api) -> None:
    assert (await api.client.post(SQUAD_PATH, json=SQUAD, headers=ADMIN)).status_code == 200
    stored = await summary(api, "daily_active_users")
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert (body["periodType"], body["periodValue"]) == ("calendar", "month")
    assert (body["currentStart"], body["currentEnd"]) == (
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    )
    # One of the pair given: the other is the stored one.
    week = await summary(api, "daily_active_users", periodValue="week")
    assert week.status_code == 200, week.text
    assert (week.json()["periodType"], week.json()["periodValue"]) == ("calendar", "week")
    # A query's own periodDefinition replaces the stored pair.
    exante_way = await summary(api, "daily_active_users", periodDefinition="as_of_date")
    assert exante_way.status_code == 200, exante_way.text
    assert exante_way.json()["periodType"] is None
    # Exante's stored period_definition is the default of its metric.
    exante = {**EXANTE_METRIC, "period_definition": "month_to_date"}
    assert (await api.client.post("/api/metrics", json=exante, headers=ADMIN)).status_code == 200
    dso = await summary(api, "party_dso")
    assert dso.status_code == 200, dso.text
    assert dso.json()["periodDefinition"] == "month_to_date"
    # A metric that stores no period still needs one from the query.
    plain = {"title": "NPS", "ownerId": "u"}
    assert (await api.client.post(SQUAD_PATH, json=plain, headers=ADMIN)).status_code == 200
    refused = await summary(api, "nps")
    assert refused.status_code == 422
    assert error_locs(refused) == [["query", "periodType"], ["query", "periodValue"]]


async def test_sequence_names_differing_only_in_symbols_get_their_own_uids(api: Api) -> None:
    base = {"aggregationType": "COUNT", "eventType": "sale"}
    euro = await api.client.post(
        "/usage-metrics", json={**base, "name": "Revenue (€)"}, headers=ADMIN
    )
    dollar = await api.client.post(
        "/usage-metrics", json={**base, "name": "Revenue ($)"}, headers=ADMIN
    )
    assert (euro.status_code, dollar.status_code) == (201, 201), dollar.text
    uids = {euro.json()["uid"], dollar.json()["uid"]}
    assert len(uids) == 2
    assert all(uid.startswith("revenue_") for uid in uids)
    again = await api.client.post(
        "/usage-metrics", json={**base, "name": "Revenue ($)"}, headers=ADMIN
    )
    assert again.status_code == 409
    assert repr(dollar.json()["uid"]) in again.json()["detail"][0]["msg"]
    # A name that is already a slug is its own uid.
    slug = await api.client.post(
        "/usage-metrics", json={**base, "name": "total_length_of_sent_messages"}, headers=ADMIN
    )
    assert slug.status_code == 201, slug.text
    assert slug.json()["uid"] == "total_length_of_sent_messages"


async def test_a_definitions_422_lists_shape_errors_and_rules_at_once(api: Api) -> None:
    body = {
        "name": "Sent",
        "eventType": "message_sent",
        "aggregationType": "SUM",
        "metricType": "GROUPED",
        "timeUnits": ["fortnight"],
    }
    response = await api.client.post("/usage-metrics", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert sorted(map(str, error_locs(response))) == sorted(
        map(
            str,
            [
                ["body", "timeUnits", 0],
                ["body", "aggregationProperty"],
                ["body", "groupingProperty"],
            ],
        )
    )
    # On a seed path, in the seed's names: Squad's bad periodValue with a lone targetValue.
    squad = {**SQUAD, "periodValue": "fortnight", "targetOperator": None}
    refused = await api.client.post(SQUAD_PATH, json=squad, headers=ADMIN)
    assert refused.status_code == 422
    assert sorted(map(str, error_locs(refused))) == sorted(
        map(str, [["body", "periodValue"], ["body", "targetValue"]])
    )


async def test_a_half_pair_on_a_metric_storing_a_period_definition_says_what_it_needs(
    api: Api,
) -> None:
    exante = {**EXANTE_METRIC, "period_definition": "month_to_date"}
    assert (await api.client.post("/api/metrics", json=exante, headers=ADMIN)).status_code == 200
    refused = await summary(api, "party_dso", periodType="rolling")
    assert refused.status_code == 422, refused.text
    assert error_locs(refused) == [["query", "periodValue"]]
    message = refused.json()["detail"][0]["msg"]
    # It stores a period (a definition), just no periodValue to pair with periodType.
    assert "stores none" not in message
    assert message.startswith("periodValue is required with periodType"), message
    assert "periodDefinition month_to_date" in message, message
    plain = {"title": "NPS", "ownerId": "u"}
    assert (await api.client.post(SQUAD_PATH, json=plain, headers=ADMIN)).status_code == 200
    refused = await summary(api, "nps", periodValue="week")
    assert error_locs(refused) == [["query", "periodType"]]
    assert "no periodType" in refused.json()["detail"][0]["msg"], refused.text
