"""The read-side commands and the errors a person meets, through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    produce,
    wait_caught_up,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

CALLS = {
    "uid": "calls",
    "name": "Calls",
    "eventType": "call",
    "aggregationType": "COUNT",
    "metricType": "GROUPED",
    "groupingProperty": "plan",
    "timeUnits": ["day", "month"],
    "timezone": "Asia/Kathmandu",
}


def tally(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


async def test_values_and_status_show_what_the_worker_wrote(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    await apply_metrics(fresh_database, [CALLS], tmp_path)
    now = datetime.now(UTC).isoformat()
    events = [
        (
            b"acme",
            orjson.dumps(
                {
                    "id": f"c{n}",
                    "eventType": "call",
                    "customerId": "acme",
                    "timestamp": now,
                    "properties": {"plan": "pro" if n % 3 else "free"},
                }
            ),
        )
        for n in range(90)
    ]
    worker = WorkerProcess(
        "cli", worker_env(kafka_bootstrap, fresh_database, topic, "g-cli"), tmp_path
    ).start()
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, events)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    env = {
        "TALLY_DATABASE_URL": fresh_database,
        "TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TALLY_TOPIC": topic,
    }

    shown = tally("values", "--metric", "calls", "--format", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    connection = await asyncpg.connect(fresh_database)
    try:
        stored = await connection.fetch(
            "SELECT group_key, time_unit, value, event_count FROM tally.metric_values"
        )
    finally:
        await connection.close()
    assert {(r["group"], r["unit"], r["value"], r["events"]) for r in rows} == {
        (r["group_key"], r["time_unit"], str(r["value"]), r["event_count"]) for r in stored
    }
    assert {(r["group"], r["unit"], r["value"]) for r in rows} == {
        ("free", "day", "30"),
        ("pro", "day", "60"),
        ("free", "month", "30"),
        ("pro", "month", "60"),
    }
    assert all(r["period_start"].endswith("+05:45") for r in rows)  # shown in the metric's zone

    as_csv = tally("values", "--customer", "acme", "--unit", "day", "--format", "csv", env=env)
    assert as_csv.returncode == 0, as_csv.stderr
    assert {r["group"]: r["value"] for r in csv.DictReader(io.StringIO(as_csv.stdout))} == {
        "free": "30",
        "pro": "60",
    }
    table = tally("values", "--group", "pro", env=env)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["metric", "customer", "group", "unit"]
    assert len(table.stdout.splitlines()) == 2 + 2  # header, rule, day and month
    # Four rollups in all: the "more rows" hint only when some were left out.
    exactly = tally("values", "--limit", "4", env=env)
    assert exactly.returncode == 0, exactly.stderr
    assert "first 4 rows" not in exactly.stdout
    assert len(exactly.stdout.splitlines()) == 2 + 4
    cut = tally("values", "--limit", "3", env=env)
    assert "(first 3 rows;" in cut.stdout
    assert len(cut.stdout.splitlines()) == 2 + 3 + 1
    refused = tally("values", "--limit", "0", env=env)
    assert refused.returncode == 2
    assert "--limit" in refused.stderr
    assert "1 or more" in refused.stderr

    status = tally("status", "--format", "json", env=env)
    assert status.returncode == 0, status.stderr
    partitions = json.loads(status.stdout)
    assert sorted(p["partition"] for p in partitions) == [0, 1]
    assert sum(p["records"] for p in partitions) == 90
    assert all(p["lag"] == 0 for p in partitions), partitions
    # Every event has the key "acme", so one partition holds them all; the other
    # had no records, and its one flush stored where the worker started the
    # metric (tally.metric_starts, docs/backfill.md), so it shows its owner too.
    assert sorted((p["records"], p["owner"]) for p in partitions) == [(0, "cli"), (90, "cli")]


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ["send", "--synthetic", "1"],
            {"TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
            "cannot reach Kafka",
        ),
        (
            ["values"],
            {"TALLY_DATABASE_URL": "postgresql://tally:wrong@{pg_host}/tally"},
            "refused the password",
        ),
        (
            ["values"],
            {"TALLY_DATABASE_URL": "postgresql://tally:tally@127.0.0.1:9/tally"},
            "cannot reach PostgreSQL at postgresql://tally:***@127.0.0.1:9/tally",
        ),
        (
            ["send", "--synthetic", "1", "--topic", "no-such-topic-anywhere"],
            {},
            "topic no-such-topic-anywhere does not exist",
        ),
        (["metrics", "apply", "{file}"], {}, "#1 (calls) aggregation_type: unknown field"),
        (
            ["run"],
            {"TALLY_FLUSH_INTERVAL": "often"},
            "TALLY_FLUSH_INTERVAL: 'often' is not a duration",
        ),
    ],
    ids=[
        "kafka-unreachable",
        "wrong-password",
        "postgres-unreachable",
        "missing-topic",
        "unknown-field",
        "bad-setting",
    ],
)
async def test_errors_are_one_clear_line_without_a_traceback(
    kafka_bootstrap: str,
    fresh_database: str,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    says: str,
) -> None:
    bad = tmp_path / "metrics.yaml"
    bad.write_text("uid: calls\nname: Calls\neventType: call\naggregation_type: COUNT\n")
    pg_host = fresh_database.split("@", 1)[1].split("/", 1)[0]
    args = [a.replace("{file}", str(bad)) for a in args]
    env = {
        "TALLY_DATABASE_URL": fresh_database,
        "TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        **{k: v.replace("{pg_host}", pg_host) for k, v in env.items()},
    }
    assert tally("migrate", env={"TALLY_DATABASE_URL": fresh_database}).returncode == 0
    done = tally(*args, env=env)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("tally:")]
    assert len(message) == 1, done.stderr
    assert "wrong" not in done.stderr  # the password is never echoed


PLACES = {
    "uid": "last_plan",
    "name": "Last plan",
    "eventType": "call",
    "aggregationType": "LATEST",
    "aggregationProperty": "plan",
    "valueType": "STRING",
    "metricType": "GROUPED",
    "groupingProperties": ["region", "$.tier", "zone"],
    "timeUnits": ["day"],
}


async def test_values_show_kinds_and_filter_by_group_name(
    fresh_database: str, tmp_path: Path
) -> None:
    await apply_metrics(fresh_database, [CALLS, PLACES], tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:
        day = datetime(2026, 3, 1, tzinfo=UTC)
        for key, text in (
            ('["eu","",null]', "Pro"),
            ('["eu",null,"z1"]', "Free"),
            ('["us","",""]', "Team"),
        ):
            await connection.execute(
                "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
                " period_start, period_end, value_text, event_count, latest_at, latest_id)"
                " VALUES ('last_plan', 'acme', $1, 'day', $2, $3, $4, 1, 1772366400000001, 'e1')",
                key,
                day,
                day + timedelta(days=1),
                text,
            )
        await connection.execute(
            "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
            " period_start, period_end, value, event_count) VALUES"
            " ('calls', 'acme', 'pro', 'day', $1, $2, 5, 5)",
            day,
            day + timedelta(days=1),
        )
    finally:
        await connection.close()
    env = {"TALLY_DATABASE_URL": fresh_database}

    eu = tally(
        "values",
        "--metric",
        "last_plan",
        "--group-by-name",
        "region=eu",
        "--format",
        "json",
        env=env,
    )
    assert eu.returncode == 0, eu.stderr
    rows = json.loads(eu.stdout)
    assert sorted(r["text"] for r in rows) == ["Free", "Pro"]
    (pro,) = [r for r in rows if r["text"] == "Pro"]
    assert pro["group_by_name"] == {"region": "eu", "$.tier": "", "zone": None}
    assert pro["value"] is None
    assert (pro["latest_at"], pro["latest_id"]) == ("2026-03-01T12:00:00.000001Z", "e1")
    both = tally(
        "values", "--metric", "last_plan", "--group-by-name", "region=eu",
        "--group-by-name", "tier=", "--format", "csv", env=env,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    (only,) = csv.DictReader(io.StringIO(both.stdout))
    assert (only["text"], only["value"], only["sum"]) == ("Pro", "", "")
    assert only["group_by_name"] == '{"region":"eu","$.tier":"","zone":null}'

    # A table shows the kind columns only when some row has them.
    counts = tally("values", "--metric", "calls", env=env)
    assert counts.returncode == 0, counts.stderr
    header = counts.stdout.splitlines()[0].split()
    assert "group_by_name" in header
    assert not {"text", "sum", "latest_at", "latest_id"} & set(header)
    assert '{"plan":"pro"}' in counts.stdout
    latest = tally("values", "--metric", "last_plan", env=env)
    assert {"text", "latest_at", "latest_id"} <= set(latest.stdout.splitlines()[0].split())

    for args, says in (
        (["--metric", "last_plan", "--group-by-name", "plan=x"], "--group-by-name plan:"),
        (["--group-by-name", "region=eu"], "needs --metric"),
        (["--metric", "last_plan", "--group-by-name", "region"], "PROPERTY=TEXT"),
    ):
        refused = tally("values", *args, env=env)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert says in refused.stderr, refused.stderr
