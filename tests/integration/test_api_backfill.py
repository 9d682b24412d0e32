"""`/backfills` (status, cancel) and the partial-range marker on `/metric-values`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.integration.test_api_support import ADMIN, CALLS, READ, Api, open_api
from tests.integration.test_api_values import DAY, VISITORS, put_value

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (CALLS, VISITORS):
            assert (await opened.create(definition)).status_code == 201
        yield opened


async def start_backfill(api: Api, uid: str, state: str = "running") -> None:
    """A backfill's rows as `tally backfill` writes them: 2 partitions, 30 of 100 done."""
    await api.sql(
        "INSERT INTO tally.backfills (metric_uid, state, from_spec) VALUES ($1, $2, 'earliest')",
        uid,
        state,
    )
    for partition, (end, next_) in enumerate(((60, 20), (40, 10))):
        await api.sql(
            "INSERT INTO tally.backfill_partitions (metric_uid, topic, partition, from_offset,"
            " end_offset, next_offset) VALUES ($1, 'events', $2, 0, $3, $4)",
            uid,
            partition,
            end,
            next_,
        )


async def test_a_cancelled_backfill_marks_its_metrics_values_partial_and_only_those(
    api: Api,
) -> None:
    await put_value(api, CALLS["uid"], "c1", DAY, "5")
    await put_value(api, VISITORS["uid"], "c1", DAY, "2")
    await start_backfill(api, VISITORS["uid"])
    shown = await api.client.get("/metric-values", headers=READ)
    assert shown.status_code == 200
    running = {i["metricUid"]: i for i in shown.json()["items"]}
    assert "partial" not in running[CALLS["uid"]]
    # Running (or killed and never resumed): partial too, with its progress.
    marker = running[VISITORS["uid"]]["partial"]
    assert (marker["reason"], marker["recordsDone"], marker["recordsTotal"]) == (
        "backfill_running",
        30,
        100,
    )
    assert marker["cancelledAt"] is None
    cancelled = await api.client.post(f"/backfills/{VISITORS['uid']}/cancel", headers=ADMIN)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    items = {
        i["metricUid"]: i
        for i in (await api.client.get("/metric-values", headers=READ)).json()["items"]
    }
    assert "partial" not in items[CALLS["uid"]]
    marker = items[VISITORS["uid"]]["partial"]
    assert marker["reason"] == "backfill_cancelled"
    assert marker["backfillFrom"] == "earliest"
    assert (marker["recordsDone"], marker["recordsTotal"]) == (30, 100)
    assert marker["cancelledAt"]
    again = await api.client.post(f"/backfills/{VISITORS['uid']}/cancel", headers=ADMIN)
    assert again.status_code == 200


async def test_backfill_status_reads_and_cancel_needs_an_admin_token(api: Api) -> None:
    await start_backfill(api, VISITORS["uid"])
    await start_backfill(api, CALLS["uid"], state="done")
    listed = await api.client.get("/backfills", headers=READ)
    assert listed.status_code == 200
    states = {b["metricUid"]: b["state"] for b in listed.json()["items"]}
    assert states == {VISITORS["uid"]: "running", CALLS["uid"]: "done"}
    one = (await api.client.get(f"/backfills/{VISITORS['uid']}", headers=READ)).json()
    assert (one["recordsDone"], one["recordsTotal"], one["from"]) == (30, 100, "earliest")
    assert [p["nextOffset"] for p in one["partitions"]] == [20, 10]
    refused = await api.client.post(f"/backfills/{VISITORS['uid']}/cancel", headers=READ)
    assert refused.status_code == 403
    assert (await api.client.post(f"/backfills/{VISITORS['uid']}/cancel")).status_code == 401
    missing = await api.client.get("/backfills/nothing", headers=READ)
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path", "metricUid"]
    done = await api.client.post(f"/backfills/{CALLS['uid']}/cancel", headers=ADMIN)
    assert done.status_code == 409
    assert "done" in done.json()["detail"][0]["msg"]
    assert (await api.client.get("/backfills/a%00b", headers=READ)).status_code == 422
