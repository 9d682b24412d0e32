"""`POST /backfills` refusing what a backfill refuses at once (issue 16),
against the real database; the launcher is a fake that records what it was
asked to start (the real child processes: test_api_backfill.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tally.api.app import create_app
from tally.backfill.launcher import Exit, Launch
from tally.config import Settings
from tally.contracts.metric import parse_metric
from tally.store import backfill as store
from tally.store.definitions import apply_definitions
from tally.store.migrate import migrate, migrations
from tally.store.pool import connect, create_pool
from tests.integration.test_api_support import ADMIN, READ, TOKENS, error_locs
from tests.integration.test_backfill import LIVE, NEW

pytestmark = pytest.mark.asyncio(loop_scope="function")

EXTERNAL = {
    "uid": "total_ar",
    "name": "Total AR",
    "source": "EXTERNAL",
    "aggregationType": "SUM",
    "timeUnits": ["day"],
}
OLD = LIVE[0]  # created before migration 0008


@dataclass
class FakeLauncher:
    started: list[tuple[str, str]] = field(default_factory=list)
    live: dict[str, Launch] = field(default_factory=dict)
    exits: dict[str, Exit] = field(default_factory=dict)

    def current(self, uid: str) -> Launch | None:
        return self.live.get(uid)

    def launches(self) -> dict[str, Launch]:
        return dict(self.live)

    def last_exit(self, uid: str) -> Exit | None:
        return self.exits.get(uid)

    async def launch(self, uid: str, from_spec: str) -> Launch:
        self.started.append((uid, from_spec))
        self.live[uid] = Launch(from_spec, datetime.now(UTC), 4242)
        return self.live[uid]

    async def close(self) -> None:
        self.live.clear()


@dataclass
class Served:
    client: httpx.AsyncClient
    launcher: FakeLauncher

    async def start(self, body: Any, headers: dict[str, str] = ADMIN) -> httpx.Response:
        return await self.client.post("/backfills", json=body, headers=headers)


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Served]:
    """OLD existed before migration 0008 (as an upgrade leaves it); NEW and
    EXTERNAL were created after; a deleted metric too."""
    before = next(m.version for m in migrations() if m.name == "backfill") - 1
    connection = await connect(fresh_database)
    try:
        await migrate(connection, up_to=before)
        await apply_definitions(connection, [parse_metric(OLD)])
        await migrate(connection)
        gone = {**NEW, "uid": "gone_users"}
        await apply_definitions(connection, [parse_metric(d) for d in (NEW, EXTERNAL, gone)])
        await connection.execute(
            "UPDATE tally.metrics SET deleted_at = now() WHERE uid = 'gone_users'"
        )
    finally:
        await connection.close()
    pool = await create_pool(fresh_database, min_size=1, max_size=4)
    launcher = FakeLauncher()
    try:
        app = create_app(
            Settings(database_url=fresh_database, api_tokens=TOKENS), pool, None, launcher
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tally.test") as client:
            yield Served(client, launcher)
    finally:
        await pool.close()


async def test_start_needs_an_admin_token_and_exactly_one_start(api: Served) -> None:
    body = {"metricUid": NEW["uid"], "fromOffsets": "earliest"}
    assert (await api.client.post("/backfills", json=body)).status_code == 401
    assert (await api.start(body, READ)).status_code == 403
    neither = await api.start({"metricUid": NEW["uid"]})
    assert neither.status_code == 422
    assert error_locs(neither) == [["body", "from"], ["body", "fromOffsets"]]
    both = await api.start({**body, "from": "2026-12-01T00:00:00Z"})
    assert both.status_code == 422
    assert error_locs(both) == [["body", "from"], ["body", "fromOffsets"]]
    assert "not both" in both.json()["detail"][0]["msg"]
    cases: list[tuple[Any, list[Any]]] = [
        ({"metricUid": NEW["uid"], "from": "yesterday"}, ["body", "from"]),
        ({"metricUid": NEW["uid"], "from": "2026-12-01T00:00:00"}, ["body", "from"]),  # no offset
        ({"metricUid": NEW["uid"], "fromOffsets": "latest"}, ["body", "fromOffsets"]),
        ({"fromOffsets": "earliest"}, ["body", "metricUid"]),
        ({**body, "metricUid": "a\u0000b"}, ["body", "metricUid"]),
        ({**body, "wait": 3}, ["body", "wait"]),
        ([body], ["body"]),
    ]
    cases.append(
        ({"metricUid": NEW["uid"], "from": None, "fromOffsets": "earliest"}, ["body", "from"])
    )
    for wrong, loc in cases:
        refused = await api.start(wrong)
        assert refused.status_code == 422, (wrong, refused.text)
        assert loc in error_locs(refused), (wrong, refused.text)
    # Schema-valid, refused up front: Kafka keeps no record time before 1970.
    early = await api.start({"metricUid": NEW["uid"], "from": "1970-01-01T00:30:00+01:00"})
    assert early.status_code == 409, early.text
    assert error_locs(early) == [["body", "from"]]
    assert "before 1970-01-01T00:00:00Z" in early.json()["detail"][0]["msg"]
    text = await api.client.post(
        "/backfills", content=b"{", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert text.status_code == 422
    assert api.launcher.started == []


async def test_start_refuses_what_a_backfill_refuses_at_once(api: Served) -> None:
    said = {
        "nothing": (404, "no metric 'nothing': create it first"),
        EXTERNAL["uid"]: (409, "metric 'total_ar' is EXTERNAL: its values come from the API"),
        "gone_users": (409, "metric 'gone_users' is deleted"),
        OLD["uid"]: (409, f"metric '{OLD['uid']}' existed before migration 0008"),
    }
    for uid, (status, message) in said.items():
        refused = await api.start({"metricUid": uid, "fromOffsets": "earliest"})
        assert refused.status_code == status, refused.text
        assert error_locs(refused) == [["body", "metricUid"]]
        assert message in refused.json()["detail"][0]["msg"]
    assert api.launcher.started == []


async def test_start_launches_once_and_shows_it_starting_then_how_it_ended(api: Served) -> None:
    uid = NEW["uid"]
    started = await api.start({"metricUid": uid, "from": "2026-12-01T00:00:00+01:00"})
    assert started.status_code == 202, started.text
    assert started.headers["location"] == f"/backfills/{uid}"
    shown = started.json()
    assert (shown["state"], shown["from"], shown["partitions"]) == (
        "starting",
        "2026-11-30T23:00:00Z",
        [],
    )
    assert api.launcher.started == [(uid, "2026-11-30T23:00:00Z")]
    again = await api.start({"metricUid": uid, "fromOffsets": "earliest"})
    assert again.status_code == 409
    assert "runs in a process of this server" in again.json()["detail"][0]["msg"]
    one = await api.client.get(f"/backfills/{uid}", headers=READ)
    assert one.status_code == 200
    assert one.json()["state"] == "starting"
    listed = await api.client.get("/backfills", headers=READ)
    assert [b["metricUid"] for b in listed.json()["items"]] == [uid]
    assert (await api.client.post(f"/backfills/{uid}/cancel", headers=ADMIN)).status_code == 409
    # The process refused before storing anything (retention, say): failed, and why.
    api.launcher.live.clear()
    api.launcher.exits[uid] = Exit(
        "2026-11-30T23:00:00Z",
        2,
        "refused",
        "backfill refused: the retained log no longer reaches",
        datetime.now(UTC),
    )
    failed = await api.client.get(f"/backfills/{uid}", headers=READ)
    assert failed.status_code == 200
    assert failed.json()["state"] == "failed"
    message = failed.json()["lastError"]
    assert "ended refused (exit status 2" in message
    assert "the retained log no longer reaches" in message
    cancel = await api.client.post(f"/backfills/{uid}/cancel", headers=ADMIN)
    assert cancel.status_code == 409
    assert "is failed: nothing is stored" in cancel.json()["detail"][0]["msg"]
    missing = await api.client.get("/backfills/nothing", headers=READ)
    assert missing.status_code == 404
    assert api.launcher.started == [(uid, "2026-11-30T23:00:00Z")]


async def stored(dsn: str, uid: str, from_spec: str, from_time: datetime | None) -> None:
    connection = await connect(dsn)
    try:
        part = store.BackfillPartition("events", 0, 0, 10, 4)
        assert await store.create_backfill(connection, uid, from_spec, from_time, [part], "x")
    finally:
        await connection.close()


async def test_a_stored_backfill_whose_process_crashed_says_so(
    api: Served, fresh_database: str
) -> None:
    """Review finding 2: a child that crashed after storing its row left it
    `running` with no lastError, as if merely stopped; it shows how it ended."""
    uid = NEW["uid"]
    await stored(fresh_database, uid, "earliest", None)
    quiet = await api.client.get(f"/backfills/{uid}", headers=READ)
    assert (quiet.json()["state"], quiet.json()["lastError"]) == ("running", None)
    api.launcher.exits[uid] = Exit("earliest", 0, "stopped", None, datetime.now(UTC))
    stopped = await api.client.get(f"/backfills/{uid}", headers=READ)
    assert stopped.json()["lastError"] is None  # SIGTERM: stopped, resumable, no error
    at = datetime.now(UTC)
    api.launcher.exits[uid] = Exit("earliest", 1, "failed", "unexpected error: ValueError", at)
    crashed = await api.client.get(f"/backfills/{uid}", headers=READ)
    assert crashed.status_code == 200
    shown = crashed.json()
    assert shown["state"] == "running"
    assert "ended failed (exit status 1" in shown["lastError"]
    assert "unexpected error: ValueError" in shown["lastError"]
    assert shown["lastErrorAt"] == at.isoformat()
    listed = (await api.client.get("/backfills", headers=READ)).json()["items"]
    assert "ended failed" in listed[0]["lastError"]
    api.launcher.live[uid] = Launch("earliest", datetime.now(UTC), 1)  # resumed: running again
    assert (await api.client.get(f"/backfills/{uid}", headers=READ)).json()["lastError"] is None


async def test_start_refuses_a_stored_backfill_with_another_start_naming_it(
    api: Served, fresh_database: str
) -> None:
    """Review finding 9: 409 naming body.from / body.fromOffsets, with how to resume."""
    uid = NEW["uid"]
    await stored(fresh_database, uid, "2026-12-01T00:00:00Z", datetime(2026, 12, 1, tzinfo=UTC))
    other = await api.start({"metricUid": uid, "from": "2026-11-01T00:00:00Z"})
    assert other.status_code == 409, other.text
    assert error_locs(other) == [["body", "from"]]
    assert 'resume it with {"from": "2026-12-01T00:00:00Z"}' in other.json()["detail"][0]["msg"]
    earliest = await api.start({"metricUid": uid, "fromOffsets": "earliest"})
    assert earliest.status_code == 409, earliest.text
    assert error_locs(earliest) == [["body", "fromOffsets"]]
    same = await api.start({"metricUid": uid, "from": "2026-12-01T01:00:00+01:00"})
    assert same.status_code == 202, same.text
    assert api.launcher.started == [(uid, "2026-12-01T00:00:00Z")]


async def test_a_stored_error_clears_when_progress_moves_and_when_it_is_done(
    api: Served, fresh_database: str
) -> None:
    """Review finding 3: the loser of two runs stores its error; the winner
    reading on (a flush moving progress) or finishing clears it, and an error
    stored once the backfill is done is not kept."""
    uid = NEW["uid"]
    await stored(fresh_database, uid, "earliest", None)

    async def error() -> Any:
        return (await api.client.get(f"/backfills/{uid}", headers=READ)).json()["lastError"]

    connection = await connect(fresh_database)
    try:
        await store.record_error(connection, uid, "another process moved the progress")
        assert await error() == "another process moved the progress"
        async with connection.transaction():
            await store.claim_and_move(
                connection, uid, "winner", [store.ProgressStep("events", 0, 4, 7, 3, 0)]
            )
        assert await error() is None
        await store.record_error(connection, uid, "another process moved the progress")
        async with connection.transaction():
            await store.claim_and_move(
                connection, uid, "winner", [store.ProgressStep("events", 0, 7, 10, 3, 0)]
            )
        await store.record_error(connection, uid, "another process moved the progress")
        assert await store.finish(connection, uid, "winner")  # clears it too
        await store.record_error(connection, uid, "another process moved the progress")
        shown = (await api.client.get(f"/backfills/{uid}", headers=READ)).json()
        assert (shown["state"], shown["lastError"], shown["lastErrorAt"]) == ("done", None, None)
    finally:
        await connection.close()
