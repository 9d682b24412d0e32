"""Bearer tokens on every operation: 401 without a valid token, 403 with too
small a scope, closed when no token is configured; only health is open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tally.api.auth import token_entry
from tests.integration.test_api_support import (
    ADMIN,
    ADMIN_TOKEN,
    CALLS,
    READ,
    TOKENS,
    Api,
    error_locs,
    open_api,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        assert (await opened.create(CALLS)).status_code == 201
        # GET /backfills/api_calls reads it (a running backfill: cancel is admin only).
        await opened.sql(
            "INSERT INTO tally.backfills (metric_uid, state, from_spec)"
            " VALUES ('api_calls', 'running', 'earliest')"
        )
        yield opened


def operations(api: Api) -> list[tuple[str, str, bool]]:
    """(method, url, needs admin) of every operation the OpenAPI document lists."""
    app = api.client._transport.app  # type: ignore[attr-defined]
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            if operation.get("security"):
                url = path.replace("{idOrUid}", "api_calls")
                for name, value in (
                    ("{uid}", "api_calls"),
                    ("{metricUid}", "api_calls"),
                    ("{context_type}", "ORGANIZATION"),
                    ("{entity_uid}", "acme"),
                    ("{orgId}", "org"),
                    ("{workspaceId}", "ws"),
                ):
                    url = url.replace(name, value)
                # The usage query and summary's required parameters (a reader gets 200).
                if url.endswith("/usage"):
                    url += "?customerId=acme&from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z"
                elif url.endswith("/summary"):
                    url += "?customerId=acme&periodType=rolling&periodValue=7-day"
                found.append((method.upper(), url, method != "get"))
    # POST /events and POST /events/explain included, the usage query and
    # summary, the four backfill operations (POST /backfills starts one);
    # then the external values endpoint and the four seed paths (Exante
    # twice, Squad, Cuoral).
    assert len(found) == 21
    return found


async def call(api: Api, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"name": "x"} if method in ("POST", "PATCH") else None
    return await api.client.request(
        method, url, json=body, headers={**headers, "Idempotency-Key": "auth-test"}
    )


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert error_locs(response) == [["header", "Authorization"]]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if status == 403:
        assert 'error="insufficient_scope"' in challenge


async def test_every_operation_needs_a_valid_token(api: Api) -> None:
    for method, url, _ in operations(api):
        assert_refused(await call(api, method, url, {}), 401)
        assert_refused(await call(api, method, url, {"Authorization": "Bearer nope"}), 401)
        assert_refused(await call(api, method, url, {"Authorization": f"Basic {ADMIN_TOKEN}"}), 401)
        assert_refused(await call(api, method, url, {"Authorization": ADMIN_TOKEN}), 401)


async def test_read_tokens_read_and_admin_tokens_do_everything(api: Api) -> None:
    for method, url, needs_admin in operations(api):
        as_reader = await call(api, method, url, READ)
        if needs_admin:
            assert_refused(as_reader, 403)
        else:
            assert as_reader.status_code == 200, (url, as_reader.text)
    # The refusals changed nothing.
    metric = await api.client.get("/usage-metrics/api_calls", headers=READ)
    assert metric.json()["name"] == "API calls"
    assert await api.sql("SELECT 1 FROM tally.value_adjustments") == []
    for method, url, _ in operations(api):
        as_admin = await call(api, method, url, ADMIN)
        assert as_admin.status_code not in (401, 403), (method, url, as_admin.text)


async def test_without_configured_tokens_everything_but_health_is_closed(
    fresh_database: str,
) -> None:
    async with open_api(fresh_database, tokens="") as api:
        for method, url, _ in operations(api):
            assert_refused(await call(api, method, url, ADMIN), 401)
        assert (await api.client.get("/healthz")).status_code == 200
        assert (await api.client.get("/readyz")).json() == {"status": "ok"}
        assert (await api.client.get("/openapi.json", headers=ADMIN)).status_code == 401


async def test_the_openapi_document_is_served_to_readers(api: Api) -> None:
    assert (await api.client.get("/openapi.json")).status_code == 401
    served = await api.client.get("/openapi.json", headers=READ)
    assert served.status_code == 200
    assert served.json()["info"]["title"] == "Tally"
    for hidden in ("/docs", "/redoc"):
        assert (await api.client.get(hidden, headers=READ)).status_code == 404


async def test_an_ingest_token_only_sends_events(fresh_database: str) -> None:
    ingest = {"Authorization": "Bearer tly_test_ingest_only"}
    tokens = TOKENS + "," + token_entry("meter", "ingest", "tly_test_ingest_only")
    async with open_api(fresh_database, tokens=tokens) as api:
        for method, url, _ in operations(api):
            answered = await call(api, method, url, ingest)
            if (method, url) == ("POST", "/events"):
                # Past the token: {"name": "x"} is one event, refused by the decoder.
                assert answered.status_code == 422, answered.text
                assert answered.json()["detail"][0]["type"] == "missing_field"
            elif (method, url) == ("POST", "/events/explain"):
                # Explaining is for those who send events: the same event, explained.
                assert answered.status_code == 200, answered.text
                assert answered.json()["reason"] == "missing_field"
            else:
                assert_refused(answered, 403)
        assert (await api.client.get("/openapi.json", headers=ingest)).status_code == 403
