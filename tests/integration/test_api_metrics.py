"""`/usage-metrics` against the real PostgreSQL: every operation and refusal,
idempotency keys, and concurrent creates of one uid."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tally.contracts.metric import parse_metric
from tally.store.definitions import apply_definitions, list_metrics, revision
from tests.integration.test_api_support import ADMIN, CALLS, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

MINUTES: dict[str, Any] = {
    "uid": "call_minutes",
    "name": "Call minutes",
    "description": "Minutes of calls, by plan",
    "unit": "minutes",
    "eventType": "call",
    "aggregationType": "SUM",
    "aggregationProperty": "minutes",
    "metricType": "GROUPED",
    "groupingProperty": "plan",
    "propertyFilters": {"region": ["eu", "us"], "test": [True]},
    "propertiesToNegate": ["test"],
    "caseSensitive": False,
    "timeUnits": ["hour", "month"],
    "timezone": "Europe/Berlin",
}


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        yield opened


async def test_create_returns_the_stored_metric_with_every_field(api: Api) -> None:
    response = await api.create(MINUTES)
    assert response.status_code == 201, response.text
    body = response.json()
    assert {k: body[k] for k in MINUTES} == MINUTES
    # Defaults are shown: the metering model's fields too (issue 13).
    assert set(body) == {*MINUTES, "id", "createdAt", "updatedAt", "valueType", "presenceFilters"}
    assert response.headers["location"] == f"/usage-metrics/{body['id']}"

    defaults = (await api.create(CALLS)).json()
    assert defaults["metricType"] == "SIMPLE"
    assert defaults["caseSensitive"] is True
    assert defaults["timezone"] == "UTC"
    assert defaults["propertyFilters"] == {}
    assert defaults["propertiesToNegate"] == []
    assert defaults["valueType"] == "NUMBER"
    assert defaults["presenceFilters"] == {}

    # What the worker reads: the same definition, from the same table.
    async with api.pool.acquire() as connection:
        stored = {m.uid: m for m in await list_metrics(connection)}
    assert stored["call_minutes"].to_document() == body


async def test_create_refuses_what_the_contract_refuses_naming_the_field(api: Api) -> None:
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        ({**CALLS, "aggregationType": "SUM"}, ["body", "aggregationProperty"]),
        ({**CALLS, "aggregationProperty": "x"}, ["body", "aggregationProperty"]),
        ({**CALLS, "metricType": "GROUPED"}, ["body", "groupingProperty"]),
        ({**CALLS, "uid": "Not-A-Uid"}, ["body", "uid"]),
        ({**CALLS, "timezone": "Mars/Olympus"}, ["body", "timezone"]),
        ({**CALLS, "timeUnits": ["fortnight"]}, ["body", "timeUnits", 0]),
        ({**CALLS, "propertiesToNegate": ["plan"]}, ["body", "propertiesToNegate"]),
        ({**CALLS, "aggregation_type": "COUNT"}, ["body", "aggregation_type"]),
        ({k: v for k, v in CALLS.items() if k != "name"}, ["body", "name"]),
        ({**CALLS, "name": "x\x00y"}, ["body", "name"]),
        ({**CALLS, "propertyFilters": {"n": [2**70]}}, ["body", "propertyFilters", "n", 0]),
        ({**CALLS, "deletedAt": "0001-01-01T00:00:00+01:00"}, ["body", "deletedAt"]),
    ]
    for definition, loc in cases:
        response = await api.create(definition)
        assert response.status_code == 422, (definition, response.text)
        assert loc in error_locs(response), (definition, response.text)
    assert await api.sql("SELECT uid FROM tally.metrics") == []


async def test_create_refuses_bodies_that_are_not_json_objects(api: Api) -> None:
    post = api.client.post
    not_json = await post(
        "/usage-metrics", content=b"{", headers={**ADMIN, "content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert error_locs(not_json) == [["body"]]
    array = await post("/usage-metrics", json=[CALLS], headers=ADMIN)
    assert array.status_code == 422
    assert error_locs(array) == [["body"]]
    form = await post("/usage-metrics", data={"uid": "x"}, headers=ADMIN)
    assert form.status_code == 415
    assert error_locs(form) == [["header", "Content-Type"]]
    huge = await post(
        "/usage-metrics",
        content=b'{"name": "' + b"x" * (2 << 20) + b'"}',
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert huge.status_code == 413


async def test_an_existing_uid_is_a_conflict_even_when_deleted(api: Api) -> None:
    assert (await api.create(CALLS)).status_code == 201
    again = await api.create({**CALLS, "name": "Other"})
    assert again.status_code == 409
    assert error_locs(again) == [["body", "uid"]]
    assert (await api.client.delete("/usage-metrics/api_calls", headers=ADMIN)).status_code == 200
    assert (await api.create(CALLS)).status_code == 409


async def test_the_same_idempotency_key_and_body_replays_the_first_response(api: Api) -> None:
    first = await api.create(CALLS, **{"Idempotency-Key": "create-calls-1"})
    assert first.status_code == 201
    # Key order and white space do not make another request.
    reordered = dict(reversed(list(CALLS.items())))
    again = await api.create(reordered, **{"Idempotency-Key": "create-calls-1"})
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(await api.sql("SELECT 1 FROM tally.metrics")) == 1

    # The same key with another body is refused, and nothing is written.
    other = await api.create(MINUTES, **{"Idempotency-Key": "create-calls-1"})
    assert other.status_code == 422
    assert error_locs(other) == [["header", "Idempotency-Key"]]
    assert len(await api.sql("SELECT 1 FROM tally.metrics")) == 1

    # Without the key, the uid is taken.
    assert (await api.create(CALLS)).status_code == 409


async def test_a_refused_request_leaves_its_key_unused(api: Api) -> None:
    assert (await api.create(CALLS)).status_code == 201
    refused = await api.create(CALLS, **{"Idempotency-Key": "k-409"})
    assert refused.status_code == 409
    assert await api.sql("SELECT key FROM tally.api_idempotency") == []
    # The key can then carry another request.
    assert (await api.create(MINUTES, **{"Idempotency-Key": "k-409"})).status_code == 201


async def test_bad_idempotency_keys_are_refused(api: Api) -> None:
    for key in ("", "x" * 256, "with space"):
        response = await api.create(CALLS, **{"Idempotency-Key": key})
        assert response.status_code == 422, key
        assert error_locs(response) == [["header", "Idempotency-Key"]]


async def test_concurrent_creates_of_one_uid_make_exactly_one(api: Api) -> None:
    responses = await asyncio.gather(
        *(api.create({**CALLS, "name": f"Calls {n}"}) for n in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert len(await api.sql("SELECT 1 FROM tally.metrics")) == 1


async def test_concurrent_retries_with_one_key_get_one_response(api: Api) -> None:
    responses = await asyncio.gather(
        *(api.create(CALLS, **{"Idempotency-Key": "retry-storm"}) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 9
    assert len(await api.sql("SELECT 1 FROM tally.metrics")) == 1


async def test_list_pages_filters_and_shows_deleted_on_request(api: Api) -> None:
    for n in range(5):
        assert (
            await api.create({**CALLS, "uid": f"m{n}", "eventType": f"e{n % 2}"})
        ).status_code == 201
    assert (await api.client.delete("/usage-metrics/m4", headers=ADMIN)).status_code == 200

    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = (await api.client.get("/usage-metrics", params=params, headers=READ)).json()
        assert len(page["items"]) <= 2
        seen += [m["uid"] for m in page["items"]]
        after = page["pagination"]["after"]
        if after is None:
            break
    assert seen == ["m0", "m1", "m2", "m3"]

    everything = await api.client.get(
        "/usage-metrics", params={"includeDeleted": "true"}, headers=READ
    )
    items = everything.json()["items"]
    assert [m["uid"] for m in items] == ["m0", "m1", "m2", "m3", "m4"]
    assert "deletedAt" in items[4]
    assert "deletedAt" not in items[0]

    by_type = await api.client.get("/usage-metrics", params={"eventType": "e1"}, headers=READ)
    assert [m["uid"] for m in by_type.json()["items"]] == ["m1", "m3"]

    bad = await api.client.get("/usage-metrics", params={"after": "bm90IGEgY3Vyc29y"}, headers=READ)
    assert bad.status_code == 422
    assert error_locs(bad) == [["query", "after"]]
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"includeDeleted": "maybe"}):
        assert (
            await api.client.get("/usage-metrics", params=params, headers=READ)
        ).status_code == 422


async def test_get_by_id_or_uid(api: Api) -> None:
    created = (await api.create(MINUTES)).json()
    by_uid = await api.client.get("/usage-metrics/call_minutes", headers=READ)
    by_id = await api.client.get(f"/usage-metrics/{created['id']}", headers=READ)
    assert by_uid.status_code == by_id.status_code == 200
    assert by_uid.json() == by_id.json() == created

    missing = await api.client.get("/usage-metrics/nothing_here", headers=READ)
    assert missing.status_code == 404
    assert error_locs(missing) == [["path", "idOrUid"]]
    unknown_id = await api.client.get(
        "/usage-metrics/00000000-0000-0000-0000-000000000000", headers=READ
    )
    assert unknown_id.status_code == 404

    await api.client.delete("/usage-metrics/call_minutes", headers=ADMIN)
    assert (await api.client.get("/usage-metrics/call_minutes", headers=READ)).status_code == 404
    shown = await api.client.get(
        "/usage-metrics/call_minutes", params={"includeDeleted": "true"}, headers=READ
    )
    assert shown.status_code == 200
    assert "deletedAt" in shown.json()


async def test_patch_changes_mutable_fields_and_bumps_the_revision(api: Api) -> None:
    created = (await api.create(MINUTES)).json()
    async with api.pool.acquire() as connection:
        before = await revision(connection)
    response = await api.client.patch(
        "/usage-metrics/call_minutes",
        json={"name": "Minutes", "description": None, "unit": "min"},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Minutes"
    assert body["unit"] == "min"
    assert "description" not in body
    assert body["createdAt"] == created["createdAt"]
    assert body["updatedAt"] > created["updatedAt"]
    async with api.pool.acquire() as connection:
        assert await revision(connection) > before
        (stored,) = await list_metrics(connection)
    assert stored.to_document() == body

    # Sending an immutable field with its stored value (read-modify-write) is no change.
    same = await api.client.patch(
        f"/usage-metrics/{created['id']}",
        json={"timeUnits": ["month", "hour"], "eventType": "call"},
        headers=ADMIN,
    )
    assert same.status_code == 200
    assert same.json() == body


async def test_a_respelled_path_beside_a_real_change_keeps_the_stored_spelling(
    api: Api,
) -> None:
    """The API's `group` object is keyed by the stored spelling: a PATCH that
    respells `region` as `$.region` while renaming must not rename the keys."""
    grouped = {
        **CALLS,
        "metricType": "GROUPED",
        "groupingProperties": ["region", "$.plan.tier"],
        "presenceFilters": {"$.usage.cached": True},
    }
    assert (await api.create(grouped)).status_code == 201
    response = await api.client.patch(
        "/usage-metrics/api_calls",
        json={
            "name": "Calls",
            "groupingProperties": ["$.region", "$['plan']['tier']"],
            "presenceFilters": {"$['usage'].cached": True},
        },
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Calls"
    assert body["groupingProperties"] == ["region", "$.plan.tier"]
    assert body["presenceFilters"] == {"$.usage.cached": True}
    async with api.pool.acquire() as connection:
        (stored,) = await list_metrics(connection)
        assert stored.to_document() == body
        # `tally metrics apply` keeps it too.
        respelled = {
            **grouped,
            "name": "Calls again",
            "groupingProperties": ["$['region']", "$.plan.tier"],
        }
        await apply_definitions(connection, [parse_metric(respelled)])
        (applied,) = await list_metrics(connection)
    assert applied.name == "Calls again"
    assert list(applied.grouping_properties or ()) == ["region", "$.plan.tier"]


async def test_patch_refuses_immutable_and_server_fields_naming_them(api: Api) -> None:
    await api.create(MINUTES)
    url = "/usage-metrics/call_minutes"
    immutable = await api.client.patch(
        url, json={"eventType": "other", "timezone": "UTC", "name": "ok"}, headers=ADMIN
    )
    assert immutable.status_code == 422
    assert error_locs(immutable) == [["body", "eventType"], ["body", "timezone"]]
    assert "immutable" in immutable.json()["detail"][0]["msg"]

    server = await api.client.patch(url, json={"id": "x", "createdAt": "y"}, headers=ADMIN)
    assert server.status_code == 422
    assert error_locs(server) == [["body", "id"], ["body", "createdAt"]]
    unknown = await api.client.patch(url, json={"colour": "red"}, headers=ADMIN)
    assert error_locs(unknown) == [["body", "colour"]]
    blank = await api.client.patch(url, json={"name": "  "}, headers=ADMIN)
    assert error_locs(blank) == [["body", "name"]]
    missing = await api.client.patch("/usage-metrics/nope", json={"name": "x"}, headers=ADMIN)
    assert missing.status_code == 404
    stored = (await api.client.get(url, headers=READ)).json()
    assert stored["name"] == MINUTES["name"]


async def test_patch_deletes_and_restores_with_deleted_at(api: Api) -> None:
    await api.create(CALLS)
    url = "/usage-metrics/api_calls"
    when = "2026-01-01T00:00:00Z"
    deleted = await api.client.patch(url, json={"deletedAt": when}, headers=ADMIN)
    assert deleted.status_code == 200
    assert deleted.json()["deletedAt"] == when
    assert (await api.client.patch(url, json={"deletedAt": None}, headers=ADMIN)).status_code == 404
    restored = await api.client.patch(
        url, params={"includeDeleted": "true"}, json={"deletedAt": None}, headers=ADMIN
    )
    assert restored.status_code == 200
    assert "deletedAt" not in restored.json()


async def test_delete_sets_deleted_at_and_keeps_values(api: Api) -> None:
    created = (await api.create(CALLS)).json()
    await api.sql(
        "INSERT INTO tally.metric_values (metric_uid, customer_id, time_unit, period_start,"
        " period_end, value, event_count) VALUES ('api_calls', 'acme', 'day',"
        " '2026-01-01Z', '2026-01-02Z', 7, 7)"
    )
    async with api.pool.acquire() as connection:
        before = await revision(connection)
    response = await api.client.delete(f"/usage-metrics/{created['id']}", headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["deletedAt"] >= created["createdAt"]
    async with api.pool.acquire() as connection:
        assert await revision(connection) > before
        assert await list_metrics(connection, include_deleted=False) == []
    assert len(await api.sql("SELECT 1 FROM tally.metric_values")) == 1
    # Deleting again changes nothing (DELETE is idempotent); an unknown metric is 404.
    async with api.pool.acquire() as connection:
        before = await revision(connection)
    again = await api.client.delete("/usage-metrics/api_calls", headers=ADMIN)
    assert again.status_code == 200
    assert again.json() == response.json()
    async with api.pool.acquire() as connection:
        assert await revision(connection) == before
    assert (await api.client.delete("/usage-metrics/nope", headers=ADMIN)).status_code == 404
