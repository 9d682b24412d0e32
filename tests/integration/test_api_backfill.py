"""`/backfills` (issue 16): backfills started, resumed, read and cancelled
through the API, run by the server's own child processes (`tally api serve`
with the real broker and database), and the partial-range marker on
`/metric-values`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tally.synthetic import Workload, encoded
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    produce,
    read_topic,
    rows_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)
from tests.integration.test_api_support import ADMIN, READ, TOKENS, ApiProcess
from tests.integration.test_backfill import (
    LIVE,
    NEW,
    backfill_done,
    fetch,
    wait_backfill_blocked,
    wait_started,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


@contextlib.asynccontextmanager
async def served(
    env: Mapping[str, str], log: Path
) -> AsyncIterator[tuple[ApiProcess, httpx.AsyncClient]]:
    """`tally api serve` with `env`, and a client on it; stopped (SIGTERM) at the end."""
    with ApiProcess(["api", "serve"], env, log) as server:
        url = await server.base_url()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield server, client


def child_pids(server: ApiProcess, since: int = 0) -> list[int]:
    return [
        int(p) for p in re.findall(r"backfill process started.*?pid=(\d+)", server.log()[since:])
    ]


async def state_of(client: httpx.AsyncClient, uid: str) -> dict[str, Any]:
    shown = await client.get(f"/backfills/{uid}", headers=READ)
    assert shown.status_code == 200, shown.text
    document: dict[str, Any] = shown.json()
    return document


async def wait_state(client: httpx.AsyncClient, uid: str, state: str, timeout: float = 120) -> None:
    async def reached() -> bool:
        return (await state_of(client, uid))["state"] == state

    await wait_until(reached, timeout, f"the backfill of {uid} to be {state}", interval=0.05)


async def wait_progress(dsn: str, uid: str, beyond: int) -> None:
    async def moved() -> bool:
        return (await backfill_done(dsn, uid))[0] > beyond

    await wait_until(moved, 60, f"the backfill of {uid} to count past {beyond}", interval=0.02)


LOCK_VALUES = "LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE"


async def wait_cancel_blocked(dsn: str) -> None:
    async def blocked() -> bool:
        rows = await fetch(
            dsn,
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%SET state = ''cancelled''%'",
        )
        return bool(rows)

    await wait_until(blocked, 60, "the cancel to wait for the backfill's flush", interval=0.02)


async def wait_log(server: ApiProcess, pattern: str, since: int = 0) -> None:
    async def said() -> bool:
        return re.search(pattern, server.log()[since:]) is not None

    await wait_until(said, 60, f"{pattern!r} in the server's log", interval=0.02)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def markers(client: httpx.AsyncClient) -> dict[str, set[str | None]]:
    """metric uid -> the partial reasons its values carry (None: complete)."""
    page = await client.get("/metric-values", params={"limit": 1000}, headers=READ)
    assert page.status_code == 200, page.text
    found: dict[str, set[str | None]] = {}
    for value in page.json()["items"]:
        found.setdefault(value["metricUid"], set()).add((value.get("partial") or {}).get("reason"))
    return found


async def stream(
    bootstrap: str, dsn: str, topic: str, tmp_path: Path, seed: int, events: int
) -> tuple[WorkerProcess, list[bytes], dict[str, str]]:
    """A live worker counting LIVE, `events` events streamed, NEW created
    halfway and started by the worker; returns the worker, the events and
    the API server's environment (its backfills read 50 records a fetch)."""
    env = worker_env(bootstrap, dsn, topic, f"g-api-{seed}")
    await apply_metrics(dsn, LIVE, tmp_path)
    worker = WorkerProcess(f"live-{seed}", env, tmp_path).start()
    messages = encoded(Workload(seed=seed, end=datetime.now(UTC).timestamp() - 60), events)
    try:
        await worker.wait_log("partition ready")
        await produce(bootstrap, topic, messages[: events // 2])
        await wait_caught_up(bootstrap, dsn, topic)
        await apply_metrics(dsn, [*LIVE, NEW], tmp_path)
        await wait_started(dsn, NEW["uid"], 2)
        await produce(bootstrap, topic, messages[events // 2 :])
        await wait_caught_up(bootstrap, dsn, topic)
    except BaseException:
        worker.kill()
        raise
    api_env = {
        **env,
        "TALLY_API_TOKENS": TOKENS,
        "TALLY_FLUSH_INTERVAL": "0.05",
        "TALLY_MAX_BATCH": "50",
        "TALLY_BACKFILL_FLUSH_RECORDS": "100",
    }
    return worker, [value for _, value in messages if value is not None], api_env


async def test_a_backfill_started_by_the_api_survives_a_server_stop_and_a_kill_and_is_exact(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """POST /backfills starts `tally backfill` in a child of the server. The
    server's SIGTERM stops the child cleanly (its progress kept, no process
    left); after a restart, POST resumes it; a SIGKILLed child is resumed by
    POST again; the values then equal the reference over every event, and
    the partial marker shows only while it had not finished."""
    topic = await make_topic(2)
    worker, events, env = await stream(
        kafka_bootstrap, fresh_database, topic, tmp_path, seed=8, events=20_000
    )
    uid = NEW["uid"]
    body = {"metricUid": uid, "fromOffsets": "earliest"}
    lock = await asyncpg.connect(fresh_database)
    try:
        async with served(env, tmp_path / "api-1.log") as (server, client):
            # The child's first flush waits on the values table: stopped or
            # killed there, in the middle of its range.
            async with lock.transaction():
                await lock.execute(LOCK_VALUES)
                started = await client.post("/backfills", json=body, headers=ADMIN)
                assert started.status_code == 202, started.text
                assert started.headers["location"] == f"/backfills/{uid}"
                assert started.json()["state"] in ("starting", "running")
                twice = await client.post("/backfills", json=body, headers=ADMIN)
                assert twice.status_code == 409, twice.text
                assert "runs in a process of this server" in twice.json()["detail"][0]["msg"]
                await wait_backfill_blocked(fresh_database)
                [first] = child_pids(server)
                assert server.process is not None
                os.killpg(server.process.pid, signal.SIGTERM)
                await wait_log(server, "stopping backfill processes")
            # The server's SIGTERM reached the child: it flushed, exited, was waited for.
            assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log()
        assert gone(first)
        assert re.search(r"backfill process exited.*outcome=stopped", server.log()), server.log()
        done, total = await backfill_done(fresh_database, uid)
        assert 0 < done < total
        async with served(env, tmp_path / "api-2.log") as (server, client):
            shown = await state_of(client, uid)
            assert (shown["state"], shown["recordsDone"], shown["recordsTotal"]) == (
                "running",
                done,
                total,
            )
            marks = await markers(client)
            assert marks[uid] == {"backfill_running"}
            assert all(marks[d["uid"]] == {None} for d in LIVE if d["uid"] in marks)
            async with lock.transaction():
                await lock.execute(LOCK_VALUES)
                resumed = await client.post("/backfills", json=body, headers=ADMIN)
                assert resumed.status_code == 202, resumed.text
                assert resumed.json()["recordsDone"] == done
                await wait_backfill_blocked(fresh_database)
                [second] = child_pids(server)
                os.kill(second, signal.SIGKILL)
                await wait_log(server, "backfill process exited.*outcome=killed")
            assert (await state_of(client, uid))["state"] == "running"
            assert (await backfill_done(fresh_database, uid))[0] == done
            again = await client.post("/backfills", json=body, headers=ADMIN)
            assert again.status_code == 202, again.text
            await wait_state(client, uid, "done")
            finished = await state_of(client, uid)
            assert finished["recordsDone"] == finished["recordsTotal"] == total
            assert finished["lastError"] is None
            assert uid not in {k for k, v in (await markers(client)).items() if v != {None}}
            done_again = await client.post("/backfills", json=body, headers=ADMIN)
            assert done_again.status_code == 409
            assert "is done" in done_again.json()["detail"][0]["msg"]
            cancel = await client.post(f"/backfills/{uid}/cancel", headers=ADMIN)
            assert cancel.status_code == 409
            await wait_log(server, "backfill process exited.*outcome=done")
            scraped = (await client.get("/metrics", headers=ADMIN)).text
            assert 'tally_api_backfill_exits_total{outcome="done"} 1.0' in scraped
            assert 'tally_api_backfill_exits_total{outcome="killed"} 1.0' in scraped
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        await lock.close()
        assert worker.stop() == 0
    assert re.search(r"backfill process exited.*outcome=done", server.log())
    records = await read_topic(kafka_bootstrap, topic, len(events))
    expected = reference.reference_rows([*LIVE, NEW], [r.value for r in records], dedup=True)
    actual = await rows_by_reference_key(fresh_database, [*LIVE, NEW])
    assert {k[0] for k in actual} == {d["uid"] for d in [*LIVE, NEW]}
    assert actual == expected, diff(actual, expected)


async def test_a_backfill_cancelled_through_the_api_marks_its_metrics_values_partial(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """A running backfill (started by POST) is cancelled by an admin: its
    process stops at its next flush, its values say they cover part of the
    range, the other metrics' do not; it cannot be resumed or cancelled by a
    read token, and status reads with a read token."""
    topic = await make_topic(2)
    worker, _, env = await stream(
        kafka_bootstrap, fresh_database, topic, tmp_path, seed=9, events=20_000
    )
    uid = NEW["uid"]
    lock = await asyncpg.connect(fresh_database)
    try:
        async with served(env, tmp_path / "api.log") as (server, client):
            body = {"metricUid": uid, "fromOffsets": "earliest"}
            # The cancel lands while the child's first flush waits on the
            # values table: it commits that flush, then sees the cancel.
            async with lock.transaction():
                await lock.execute(LOCK_VALUES)
                started = await client.post("/backfills", json=body, headers=ADMIN)
                assert started.status_code == 202
                await wait_backfill_blocked(fresh_database)
                listed = await client.get("/backfills", headers=READ)
                assert listed.status_code == 200
                assert [(b["metricUid"], b["state"]) for b in listed.json()["items"]] == [
                    (uid, "running")
                ]
                refused = await client.post(f"/backfills/{uid}/cancel", headers=READ)
                assert refused.status_code == 403
                assert (await client.post(f"/backfills/{uid}/cancel")).status_code == 401
                cancelling = asyncio.create_task(
                    client.post(f"/backfills/{uid}/cancel", headers=ADMIN)
                )
                await wait_cancel_blocked(fresh_database)
            cancelled = await cancelling
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["state"] == "cancelled"

            async def exited() -> bool:
                return bool(re.search(r"backfill process exited.*outcome=cancelled", server.log()))

            await wait_until(exited, 60, "the child to stop at its next flush", interval=0.05)
            shown = await state_of(client, uid)
            assert shown["state"] == "cancelled"
            assert 0 < shown["recordsDone"] < shown["recordsTotal"]
            page = await client.get("/metric-values", params={"limit": 1000}, headers=READ)
            items = page.json()["items"]
            mine = [i["partial"] for i in items if i["metricUid"] == uid]
            assert mine
            assert all(m["reason"] == "backfill_cancelled" for m in mine)
            assert {(m["recordsDone"], m["recordsTotal"]) for m in mine} == {
                (shown["recordsDone"], shown["recordsTotal"])
            }
            assert all(m["backfillFrom"] == "earliest" and m["cancelledAt"] for m in mine)
            assert all("partial" not in i for i in items if i["metricUid"] != uid)
            again = await client.post(f"/backfills/{uid}/cancel", headers=ADMIN)
            assert again.status_code == 200
            resumed = await client.post("/backfills", json=body, headers=ADMIN)
            assert resumed.status_code == 409
            assert "was cancelled" in resumed.json()["detail"][0]["msg"]
            missing = await client.get("/backfills/nothing", headers=READ)
            assert missing.status_code == 404
            assert missing.json()["detail"][0]["loc"] == ["path", "metricUid"]
            assert (await client.get("/backfills/a%00b", headers=READ)).status_code == 422
    finally:
        await lock.close()
        assert worker.stop() == 0
