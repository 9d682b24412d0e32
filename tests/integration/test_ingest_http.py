"""POST /events against the real broker, with a worker consuming the topic into the
real database: every shape reaches the values table exactly once, retries
included; mixed batches, atomic batches, limits, scopes and a broker that does
not acknowledge answer as docs/api.md says."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from tally.api.auth import token_entry
from tally.config import Settings
from tally.ingest.app import create_ingest_app
from tally.ingest.service import Ingest, build_ingest
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    api_url,
    apply_metrics,
    end_offsets,
    metric_sum,
    read_topic,
    wait_caught_up,
    worker_env,
    worker_with_api,
)
from tests.integration.test_api_support import ADMIN_TOKEN, READ, READ_TOKEN, ApiProcess

pytestmark = pytest.mark.asyncio(loop_scope="function")

INGEST_TOKEN = "tly_test_ingest_0123456789"
TOKENS = ",".join(
    [
        token_entry("billing-reader", "read", READ_TOKEN),
        token_entry("ops", "admin", ADMIN_TOKEN),
        token_entry("meter", "ingest", INGEST_TOKEN),
    ]
)
INGEST = {"Authorization": f"Bearer {INGEST_TOKEN}"}
METRICS = [
    {
        "uid": "calls",
        "name": "Calls",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "timeUnits": ["day"],
    },
    {
        "uid": "tokens",
        "name": "Tokens",
        "eventType": "api_call",
        "aggregationType": "SUM",
        "aggregationProperty": "tokens",
        "timeUnits": ["day"],
    },
]


def now() -> str:
    return datetime.now(UTC).isoformat()


def event(id: str, customer: str = "acme", tokens: int = 1) -> dict[str, Any]:
    return {
        "id": id,
        "eventType": "api_call",
        "customerId": customer,
        "timestamp": now(),
        "properties": {"tokens": tokens},
    }


def cloudevent(id: str, customer: str = "acme", tokens: int = 1) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id,
        "source": "gateway/eu-1",
        "type": "api_call",
        "subject": customer,
        "time": now(),
        "data": {"tokens": tokens},
    }


class Running:
    def __init__(self, client: httpx.AsyncClient, ingest: Ingest, topic: str, dsn: str) -> None:
        self.client = client
        self.ingest = ingest
        self.topic = topic
        self.dsn = dsn

    async def post(
        self, body: bytes, media: str = "application/json", **params: str
    ) -> httpx.Response:
        return await self.client.post(
            "/events", content=body, headers={**INGEST, "Content-Type": media}, params=params
        )

    def counter(self, name: str, **labels: str) -> float:
        value = self.ingest.telemetry.registry.get_sample_value(name, labels)
        return value or 0.0

    async def values(self) -> dict[tuple[str, str], tuple[str, int]]:
        connection = await asyncpg.connect(self.dsn)
        try:
            rows = await connection.fetch(
                "SELECT metric_uid, customer_id, value, event_count FROM tally.metric_values"
            )
        finally:
            await connection.close()
        return {
            (r["metric_uid"], r["customer_id"]): (str(r["value"]), r["event_count"]) for r in rows
        }


@contextlib.asynccontextmanager
async def running(
    kafka_bootstrap: str, dsn: str, topic: str, tmp_path: Path
) -> AsyncIterator[Running]:
    """A worker on `topic`, the metrics applied, and the ingest app on its own registry."""
    env = worker_env(kafka_bootstrap, dsn, topic, f"g-ingest-{uuid.uuid4().hex[:8]}")
    worker = WorkerProcess("ingest-worker", env, tmp_path).start()
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic=(topic,), api_tokens=TOKENS)
    ingest = build_ingest(settings, CollectorRegistry())
    try:
        await worker.wait_log("partition ready")
        since = len(worker.current_log())
        await apply_metrics(dsn, METRICS, tmp_path)
        await worker.wait_log("definitions changed", timeout=30, since=since)
        app = create_ingest_app(settings, ingest)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as client:
            yield Running(client, ingest, topic, dsn)
        assert worker.alive
    finally:
        await ingest.close()
        try:
            assert worker.stop() == 0
        except subprocess.TimeoutExpired:
            worker.kill()
            raise


def statuses(response: httpx.Response) -> list[str]:
    assert response.status_code == 202, response.text
    return [e["status"] for e in response.json()["events"]]


async def test_every_shape_reaches_the_values_table_once_even_when_retried(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    requests = [
        (orjson.dumps(event("obj-1", tokens=1)), "application/json"),
        (orjson.dumps([event(f"arr-{n}", "globex", 10) for n in range(3)]), "application/json"),
        (
            b"\n".join(orjson.dumps(event(f"nd-{n}", tokens=100)) for n in range(3)) + b"\n",
            "application/x-ndjson",
        ),
        (orjson.dumps(cloudevent("ce-1", tokens=1000)), "application/cloudevents+json"),
        (
            orjson.dumps([cloudevent(f"ceb-{n}", "globex", 10_000) for n in range(2)]),
            "application/cloudevents-batch+json",
        ),
    ]
    async with running(kafka_bootstrap, fresh_database, topic, tmp_path) as api:
        for attempt in range(2):  # the second is a client's retry: the same ids again
            for body, media in requests:
                response = await api.post(body, media)
                assert set(statuses(response)) == {"accepted"}, (attempt, media, response.text)
        assert api.counter("tally_ingest_events_accepted_total") == 20
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert await api.values() == {
            ("calls", "acme"): ("5", 5),
            ("calls", "globex"): ("5", 5),
            ("tokens", "acme"): ("1301", 5),
            ("tokens", "globex"): ("20030", 5),
        }
    records = await read_topic(kafka_bootstrap, topic, 20)
    assert len(records) == 20
    by_id = {orjson.loads(r.value)["id"]: r for r in records}
    assert by_id["ce-1"].key == b"acme"
    assert list(by_id["ce-1"].headers) == [("ce_source", b"gateway/eu-1")]
    assert not by_id["obj-1"].headers
    assert by_id["arr-0"].key == b"globex"


async def test_mixed_and_atomic_batches_and_the_limits(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    mixed = [
        event("m-1"),
        {**event("m-2"), "customerId": ""},
        {k: v for k, v in event("m-3").items() if k != "eventType"},
        {**event("m-4"), "timestamp": "2001-01-01T00:00:00Z"},
        "not an event",
        event("m-5", tokens=4),
    ]
    async with running(kafka_bootstrap, fresh_database, topic, tmp_path) as api:
        atomic = await api.post(orjson.dumps(mixed), atomic="true")
        assert atomic.status_code == 422, atomic.text
        assert [e["loc"] for e in atomic.json()["detail"]] == [
            ["body", 1, "customerId"],
            ["body", 2, "eventType"],
            ["body", 3, "timestamp"],
            ["body", 4],
        ]
        assert sum((await end_offsets(kafka_bootstrap, topic)).values()) == 0

        answered = await api.post(orjson.dumps(mixed))
        assert statuses(answered) == ["accepted", *["rejected"] * 4, "accepted"]
        body = answered.json()
        assert (body["accepted"], body["rejected"]) == (2, 4)
        reasons = [(e.get("reason"), e.get("field")) for e in body["events"]]
        assert reasons == [
            (None, None),
            ("invalid_field", "customerId"),
            ("missing_field", "eventType"),
            ("too_late", "timestamp"),
            ("not_an_object", None),
            (None, None),
        ]
        assert body["events"][1]["detail"] == "customerId must be 1 to 256 characters"
        assert [e.get("id") for e in body["events"]] == ["m-1", None, None, None, None, "m-5"]
        assert api.counter("tally_ingest_events_rejected_total", reason="too_late") == 2

        single = await api.post(orjson.dumps(mixed[2]))
        assert single.status_code == 422, single.text
        assert single.json()["detail"][0]["loc"] == ["body", "eventType"]

        too_big = await api.post(b"[" + b" " * (1 << 20) + b"]")
        assert too_big.status_code == 413, too_big.text
        too_many = await api.post(orjson.dumps([event(f"x-{n}") for n in range(1001)]))
        assert too_many.status_code == 413, too_many.text
        assert too_many.json()["detail"][0]["type"] == "too_many"
        not_json = await api.post(b"[1,", "application/json")
        assert not_json.status_code == 422
        wrong_media = await api.post(orjson.dumps(event("w")), "text/plain")
        assert wrong_media.status_code == 415
        reader = await api.client.post("/events", json=event("r"), headers=READ)
        assert reader.status_code == 403, reader.text
        nobody = await api.client.post("/events", json=event("r"))
        assert nobody.status_code == 401
        scraped = await api.client.get("/metrics", headers=INGEST)
        assert "tally_ingest_events_accepted_total 2.0" in scraped.text

        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert await api.values() == {("calls", "acme"): ("2", 2), ("tokens", "acme"): ("5", 2)}
    assert len(await read_topic(kafka_bootstrap, topic, 2)) == 2


async def test_events_kafka_does_not_acknowledge_answer_503_naming_them(
    kafka_bootstrap: str,
) -> None:
    missing = f"tally-t-missing-{uuid.uuid4().hex[:8]}"  # the broker creates no topics
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic=(missing,), api_tokens=TOKENS)
    ingest = build_ingest(settings, CollectorRegistry(), ack_timeout=1.0)
    app = create_ingest_app(settings, ingest)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest.test"
        ) as client:
            body = [event("u-1"), {**event("u-2"), "id": 5}, event("u-3")]
            response = await client.post("/events", json=body, headers=INGEST)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        detail = response.json()["detail"]
        assert [(d["loc"], d["type"]) for d in detail] == [
            (["body", 0], "not_acknowledged"),
            (["body", 1, "id"], "invalid_field"),
            (["body", 2], "not_acknowledged"),
        ]
        registry = ingest.telemetry.registry
        assert registry.get_sample_value("tally_ingest_events_unacknowledged_total") == 2
        assert registry.get_sample_value("tally_ingest_events_accepted_total") == 0
    finally:
        await ingest.close()


async def test_ingest_serve_alone_takes_events_and_stops_on_sigterm(
    kafka_bootstrap: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(1)
    env = {
        "TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TALLY_TOPIC": topic,
        "TALLY_API_TOKENS": TOKENS,
    }
    with ApiProcess(["ingest", "serve"], env, tmp_path / "ingest.log") as server:
        async with httpx.AsyncClient(base_url=await server.base_url(), timeout=20) as client:
            assert (await client.get("/readyz")).json() == {"status": "ok"}
            sent = await client.post("/events", json=[event("s-1"), event("s-2")], headers=INGEST)
            assert statuses(sent) == ["accepted", "accepted"]
            # Only the ingest routes: the read API is not served here.
            assert (await client.get("/usage-metrics", headers=READ)).status_code == 404
        assert server.stop() == 0
    assert "ingest api stopped" in server.log()
    assert len(await read_topic(kafka_bootstrap, topic, 2)) == 2

    missing = f"tally-t-missing-{uuid.uuid4().hex[:8]}"
    refused = subprocess.run(
        [sys.executable, "-m", "tally", "ingest", "serve"],
        env={**os.environ, **env, "TALLY_TOPIC": missing, "TALLY_API_HOST": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert f"topic {missing} does not exist" in refused.stderr


async def test_a_worker_with_the_api_takes_events_and_counts_them_on_its_telemetry_port(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    worker = worker_with_api(
        "ingest-with-api",
        tmp_path,
        kafka_bootstrap,
        fresh_database,
        topic,
        f"g-ingest-{uuid.uuid4().hex[:8]}",
        tokens=TOKENS,
    )
    worker.start()
    try:
        await worker.wait_serving()
        since = len(worker.current_log())
        await apply_metrics(fresh_database, METRICS, tmp_path)
        await worker.wait_log("definitions changed", timeout=30, since=since)
        async with httpx.AsyncClient(base_url=api_url(worker), timeout=20) as client:
            body = [event("w-1", tokens=2), event("w-2", "globex", 3), {"id": "w-3"}]
            sent = await client.post("/events", json=body, headers=INGEST)
            assert statuses(sent) == ["accepted", "accepted", "rejected"]
            admin = await client.post(
                "/events",
                json=event("w-4", tokens=5),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert statuses(admin) == ["accepted"]
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        samples = await worker.scrape()
        assert metric_sum(samples, "tally_ingest_events_accepted_total") == 3
        assert (
            metric_sum(samples, "tally_ingest_events_rejected_total", reason="missing_field") == 1
        )
        connection = await asyncpg.connect(fresh_database)
        try:
            rows = await connection.fetch(
                "SELECT metric_uid, customer_id, value FROM tally.metric_values"
            )
        finally:
            await connection.close()
        assert {(r["metric_uid"], r["customer_id"]): str(r["value"]) for r in rows} == {
            ("calls", "acme"): "2",
            ("calls", "globex"): "1",
            ("tokens", "acme"): "7",
            ("tokens", "globex"): "3",
        }
    finally:
        try:
            assert worker.stop() == 0
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert "request failed" not in worker.log()
