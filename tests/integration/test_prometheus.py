"""A real Prometheus (Debian's) scraping a real worker: what it stores is what was sent.

Prometheus and promtool come from `deploy/local/prometheus.sh install`, run once
per session: it installs Debian's `prometheus` package when missing (root only,
without starting its system service). With `CI` set the tests fail when that is
impossible; elsewhere they are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    metric_sum,
    produce,
    wait_caught_up,
    worker_env,
)
from tests.unit.test_deploy_manifests import (
    EXPECTED_ALERTS,
    dashboard_queries,
    exported_sample_names,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local" / "prometheus.sh"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
INSTALL_TIMEOUT_S = 900
PROMETHEUS_WAIT_S = 60.0

pytestmark = pytest.mark.asyncio(loop_scope="function")


# --- Prometheus and promtool, installed once ---------------------------------------------


@functools.cache
def _install() -> dict[str, str] | str:
    """{"prometheus": path, "promtool": path}, or why they cannot be had."""
    try:
        result = subprocess.run(
            ["bash", str(SCRIPT), "install"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`{SCRIPT.name} install` did not finish in {INSTALL_TIMEOUT_S}s"
    if result.returncode != 0:
        return f"`{SCRIPT.name} install` failed:\n{result.stderr[-3000:]}"
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {
        "prometheus": values["TALLY_PROMETHEUS_BIN"],
        "promtool": values["TALLY_PROMTOOL_BIN"],
    }


def prometheus_binaries() -> dict[str, str]:
    """Paths of prometheus and promtool; fails under CI, skips elsewhere, when missing."""
    found = _install()
    if isinstance(found, dict):
        return found
    message = (
        f"Prometheus is not available ({found}). As root, `bash deploy/local/prometheus.sh "
        "install` installs Debian's prometheus package."
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def prometheus_bins() -> dict[str, str]:
    return prometheus_binaries()


# --- a private Prometheus server ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _script(*args: str, port: int | None = None) -> str:
    env = dict(os.environ)
    if port is not None:
        env["TALLY_PROMETHEUS_PORT"] = str(port)
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, f"prometheus.sh {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout


async def _get_json(url: str) -> Any:
    def fetch() -> Any:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    return await asyncio.to_thread(fetch)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    async def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        document = await _get_json(f"{self.url}/api/v1/{path}?{query}")
        assert document["status"] == "success", document
        return document["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def values(self, expr: str, label: str | None = None) -> dict[str, float]:
        """{label value (or ""): value} of an instant vector."""
        return {
            (s["metric"].get(label, "") if label else ""): float(s["value"][1])
            for s in await self.query(expr)
        }

    async def wait_for(
        self, expr: str, expected: dict[str, float], label: str | None = None
    ) -> None:
        """Until the query returns `expected` (bounded), showing the last answer if not."""
        deadline = time.monotonic() + PROMETHEUS_WAIT_S
        got: dict[str, float] = {}
        while time.monotonic() < deadline:
            got = await self.values(expr, label)
            if got == expected:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(
            f"Prometheus: {expr} is {got} after {PROMETHEUS_WAIT_S}s, expected {expected}"
        )


@contextlib.asynccontextmanager
async def running_prometheus(config: Path, state: Path) -> Any:
    port = _free_port()
    out = await asyncio.to_thread(_script, "start", str(config), str(state), port=port)
    url = dict(line.split("=", 1) for line in out.splitlines())["TALLY_PROMETHEUS_URL"]
    try:
        yield Prometheus(url)
    finally:
        await asyncio.to_thread(_script, "stop", str(state))
        assert "stopped" in (await asyncio.to_thread(_status, state))


def _status(state: Path) -> str:
    result = subprocess.run(
        ["bash", str(SCRIPT), "status", str(state)], capture_output=True, text=True, check=False
    )
    return result.stdout


# --- the workload --------------------------------------------------------------------------

METRICS = [
    {
        "uid": "prom_calls",
        "name": "API calls",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "timeUnits": ["day"],
    },
    {
        "uid": "prom_calls_ok",
        "name": "Successful API calls",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "propertyFilters": {"status": [200]},
        "timeUnits": ["hour", "day"],
    },
    {
        "uid": "prom_gigabytes",
        "name": "GB transferred",
        "eventType": "transfer",
        "aggregationType": "SUM",
        "aggregationProperty": "gigabytes",
        "timeUnits": ["day"],
    },
]


Messages = list[tuple[bytes | None, bytes | None]]


def _event(number: int, kind: str, customer: str, properties: dict[str, Any]) -> bytes:
    stamp = datetime.fromtimestamp(time.time() - 120, UTC).isoformat()
    body = {
        "id": f"prom-{number}",
        "eventType": kind,
        "customerId": customer,
        "timestamp": stamp,
        "properties": properties,
    }
    return orjson.dumps(body)


def first_wave() -> tuple[Messages, dict[str, Any]]:
    """Messages of every outcome, and what each counter must say once they are flushed."""
    messages: Messages = []
    for i in range(300):  # 200 of them with status 200
        customer = f"c{i % 17}"
        status = 500 if i % 3 == 0 else 200
        messages.append((customer.encode(), _event(i, "api_call", customer, {"status": status})))
    for i in range(120):
        customer = f"c{i % 5}"
        messages.append(
            (customer.encode(), _event(1000 + i, "transfer", customer, {"gigabytes": i / 2}))
        )
    for i in range(10):  # no amount: skipped by prom_gigabytes, so also unmatched
        messages.append((f"c{i}".encode(), _event(2000 + i, "transfer", f"c{i}", {})))
    for i in range(40):
        messages.append((f"c{i % 7}".encode(), _event(3000 + i, "page_view", f"c{i % 7}", {})))
    messages.extend(messages[:25])  # same key, same id: caught in their partition
    messages.extend((b"broken", b"{not json") for _ in range(15))
    expected = {
        "consumed": 300 + 120 + 10 + 40 + 25 + 15,
        "applied": {"prom_calls": 300.0, "prom_calls_ok": 200.0, "prom_gigabytes": 120.0},
        "duplicates": 25.0,
        "dead_lettered": {"not_json": 15.0},
        "skipped": {"prom_gigabytes": 10.0},
        "unmatched": 50.0,
    }
    assert len(messages) == expected["consumed"]
    return messages, expected


def second_wave() -> Messages:
    """100 more API calls (50 with status 200) and 10 more broken messages."""
    messages: Messages = [
        (b"c1", _event(5000 + i, "api_call", "c1", {"status": 200 if i % 2 else 404}))
        for i in range(100)
    ]
    messages.extend((b"broken", b"[1, 2") for _ in range(10))
    return messages


def scrape_config(target: str) -> str:
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: tally
    static_configs:
      - targets: ["{target}"]
"""


async def test_prometheus_scrapes_what_the_worker_counted(
    kafka_bootstrap: str,
    fresh_database: str,
    make_topic: MakeTopic,
    tmp_path: Path,
    prometheus_bins: dict[str, str],
) -> None:
    topic = await make_topic(4)
    await apply_metrics(fresh_database, METRICS, tmp_path)
    group = f"g-prom-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        "prom-w1", worker_env(kafka_bootstrap, fresh_database, topic, group), tmp_path
    ).start()
    try:
        await worker.wait_log(r"worker started", timeout=60)
        url = worker.metrics_url()
        assert url is not None
        config = tmp_path / "prometheus.yml"
        config.write_text(scrape_config(url.removeprefix("http://")))
        async with running_prometheus(config, tmp_path / "prometheus") as prometheus:
            # Prometheus loaded the real alert rules, and scrapes the worker.
            groups = (await prometheus.api("rules"))["groups"]
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            assert set(rules) == EXPECTED_ALERTS
            assert {r["health"] for r in rules.values()} <= {"ok", "unknown"}
            await prometheus.wait_for('up{job="tally"}', {"": 1.0})

            messages, expected = first_wave()
            await produce(kafka_bootstrap, topic, messages)
            await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=120)

            await prometheus.wait_for(
                'sum(tally_events_consumed_total{job="tally"})', {"": expected["consumed"]}
            )
            await prometheus.wait_for(
                'sum by (metric) (tally_events_applied_total{job="tally"})',
                expected["applied"],
                label="metric",
            )
            await prometheus.wait_for(
                f'sum(tally_events_duplicate_total{{job="tally", topic="{topic}"}})',
                {"": expected["duplicates"]},
            )
            await prometheus.wait_for(
                'sum by (reason) (tally_events_dead_lettered_total{job="tally"}) > 0',
                expected["dead_lettered"],
                label="reason",
            )
            await prometheus.wait_for(
                'sum by (metric) (tally_events_skipped_total{job="tally"})',
                expected["skipped"],
                label="metric",
            )
            await prometheus.wait_for(
                'sum(tally_events_unmatched_total{job="tally"})', {"": expected["unmatched"]}
            )
            # The worker's own /metrics says the same.
            samples = await worker.scrape()
            assert metric_sum(samples, "tally_events_consumed_total") == expected["consumed"]
            for uid, count in expected["applied"].items():
                assert metric_sum(samples, "tally_events_applied_total", metric=uid) == count

            # Every series name Prometheus got from the worker is one the unit tests
            # derive from Telemetry (so their check of the dashboard means something).
            names = {
                name
                for name in await prometheus.api(
                    "label/__name__/values", **{"match[]": '{job="tally"}'}
                )
                if name.startswith("tally_")
            }
            assert names <= exported_sample_names(), names - exported_sample_names()
            assert {
                "tally_consumer_lag_events",
                "tally_flush_duration_seconds_bucket",
                "tally_rollup_rows_written_total",
                "tally_last_flush_timestamp_seconds",
            } <= names

            # Every dashboard query runs on the real server, and shows data, except
            # those of errors and fenced partitions, which this run has none of, and
            # the ingest servers' counters: this Prometheus scrapes only the worker.
            quiet = ("tally_errors_total", "tally_partitions_fenced_total", "tally_ingest_")
            deadline = time.monotonic() + PROMETHEUS_WAIT_S
            empty = ["?"]
            while empty and time.monotonic() < deadline:
                empty = []
                for where, expr in dashboard_queries():
                    try:
                        result = await prometheus.query(expr)
                    except Exception as exc:
                        raise AssertionError(f"{where}: {expr}: {exc}") from exc
                    if not result and not any(name in expr for name in quiet):
                        empty.append(where)
                await asyncio.sleep(0.5)
            assert not empty, f"dashboard queries without data: {empty}"

            # Counters keep adding up over scrapes. (A labelled counter appears
            # with its first value, which rate() cannot see: the second wave is what
            # the rules get to see as a rate.)
            await produce(kafka_bootstrap, topic, second_wave())
            await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=120)
            await prometheus.wait_for(
                'sum(tally_events_consumed_total{job="tally"})', {"": expected["consumed"] + 110}
            )
            await prometheus.wait_for(
                'sum by (metric) (tally_events_applied_total{job="tally"})',
                {"prom_calls": 400.0, "prom_calls_ok": 250.0, "prom_gigabytes": 120.0},
                label="metric",
            )
            await prometheus.wait_for(
                'sum by (reason) (tally_events_dead_lettered_total{job="tally"}) > 0',
                {"not_json": 25.0},
                label="reason",
            )
            # 10 dead letters among the 110 messages the rate sees: far over the 1 %
            # of TallyDeadLettersHigh, which goes pending (its `for` is 10 minutes).
            # No other alert is active.
            await prometheus.wait_for(
                'count by (alertname) (ALERTS{alertname=~"Tally.*"})',
                {"TallyDeadLettersHigh": 1.0},
                label="alertname",
            )
            (active,) = await prometheus.query('ALERTS{alertname=~"Tally.*"}')
            assert active["metric"]["alertstate"] == "pending"
            assert active["metric"]["reason"] == "not_json"

            # The worker stops: up drops to 0 and TallyWorkerDown goes pending.
            assert worker.stop() == 0, worker.log()[-3000:]
            await prometheus.wait_for('up{job="tally"}', {"": 0.0})
            await prometheus.wait_for(
                'ALERTS{alertname="TallyWorkerDown", alertstate="pending"}',
                {"TallyWorkerDown": 1.0},
                label="alertname",
            )
    finally:
        if worker.alive:
            worker.stop()
