"""Idempotency keys are per principal: another token's key is another key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import pytest_asyncio

from tally.api.auth import token_entry
from tally.store.migrate import migrate, migrations
from tally.store.pool import connect
from tests.integration.test_api_support import ADMIN, ADMIN_TOKEN, CALLS, TOKENS, Api, open_api
from tests.integration.test_api_values import adjustment

pytestmark = pytest.mark.asyncio(loop_scope="function")

OTHER_TOKEN = "tly_test_other_admin_0123456789"
OTHER = {"Authorization": f"Bearer {OTHER_TOKEN}"}
assert OTHER_TOKEN != ADMIN_TOKEN


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    tokens = TOKENS + "," + token_entry("billing-ops", "admin", OTHER_TOKEN)
    async with open_api(fresh_database, tokens) as opened:
        yield opened


async def test_a_key_of_one_principal_never_replays_for_another(api: Api) -> None:
    key = {"Idempotency-Key": "shared-key-1"}
    first = await api.client.post("/usage-metrics", json=CALLS, headers={**ADMIN, **key})
    assert first.status_code == 201

    # Same key, same body, another principal: its own request (the uid is taken).
    same = await api.client.post("/usage-metrics", json=CALLS, headers={**OTHER, **key})
    assert "idempotent-replayed" not in same.headers
    assert same.status_code == 409, same.text

    # Same key, another body, another principal: its own effect, not a key reuse.
    other_body = {**CALLS, "uid": "other_calls"}
    second = await api.client.post("/usage-metrics", json=other_body, headers={**OTHER, **key})
    assert second.status_code == 201, second.text
    assert second.json()["uid"] == "other_calls"
    uids = {r["uid"] for r in await api.sql("SELECT uid FROM tally.metrics")}
    assert uids == {"api_calls", "other_calls"}

    # Each principal's retry still replays its own response.
    again = await api.client.post("/usage-metrics", json=other_body, headers={**OTHER, **key})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == second.content
    mine = await api.client.post("/usage-metrics", json=CALLS, headers={**ADMIN, **key})
    assert mine.headers["idempotent-replayed"] == "true"
    assert mine.content == first.content


async def test_two_principals_adjusting_with_one_key_make_two_adjustments(api: Api) -> None:
    assert (await api.create(CALLS)).status_code == 201
    day = datetime(2026, 3, 1, tzinfo=UTC)
    await api.sql(
        "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, event_count) VALUES ($1, $2, '', 'day', $3, $4, $5, 1)",
        "api_calls",
        "acme",
        day,
        day + timedelta(days=1),
        Decimal(10),
    )
    made = []
    for token in (ADMIN, OTHER):
        response = await api.client.post(
            "/metric-values/adjustments",
            json=adjustment(),
            headers={**token, "Idempotency-Key": "adj-shared"},
        )
        assert response.status_code == 201, response.text
        assert "idempotent-replayed" not in response.headers
        made.append(response.json())
    assert [m["createdBy"] for m in made] == ["ops", "billing-ops"]
    assert [m["valueAfter"] for m in made] == ["8", "6"]
    rows = await api.sql("SELECT principal FROM tally.value_adjustments ORDER BY seq")
    assert [r["principal"] for r in rows] == ["ops", "billing-ops"]


async def test_keys_stored_before_the_upgrade_keep_replaying(fresh_database: str) -> None:
    """The migration re-keys existing rows by principal; none is lost."""
    before = next(m.version for m in migrations() if m.name == "api")
    connection = await connect(fresh_database)
    try:
        await migrate(connection, up_to=before)
        await connection.execute(
            "INSERT INTO tally.api_idempotency (operation, key, fingerprint, status, body, principal)"
            " VALUES ('POST /usage-metrics', 'old-key', '\\x00', 201, '{}', 'ops')"
        )
        await migrate(connection)
        rows = await connection.fetch(
            "SELECT principal, operation, key, status FROM tally.api_idempotency"
        )
    finally:
        await connection.close()
    assert [tuple(r) for r in rows] == [("ops", "POST /usage-metrics", "old-key", 201)]
