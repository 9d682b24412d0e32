"""`tally explain` as a command, over the live metrics in a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests.integration.support import ROOT

METRICS = [
    {
        "uid": "eu_calls",
        "name": "EU calls",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "timeUnits": ["day"],
        "propertyFilters": {"region": ["eu-1"]},
    },
    {
        "uid": "gone",
        "name": "Deleted",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "timeUnits": ["day"],
    },
]


def tally(dsn: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        input=stdin,
        env={**os.environ, "TALLY_DATABASE_URL": dsn},
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_explain_reads_stdin_or_a_file_against_the_live_metrics(
    fresh_database: str, tmp_path: Path
) -> None:
    assert tally(fresh_database, "migrate").returncode == 0
    path = tmp_path / "metrics.json"
    path.write_bytes(orjson.dumps({"metrics": METRICS}))
    assert tally(fresh_database, "metrics", "apply", str(path)).returncode == 0
    assert tally(fresh_database, "metrics", "delete", "gone").returncode == 0
    event = {
        "id": "e-1",
        "eventType": "api_call",
        "customerId": "acme",
        "timestamp": datetime.now(UTC).isoformat(),
        "properties": {"region": "us-1"},
    }
    shown = tally(fresh_database, "explain", "--format", "json", stdin=orjson.dumps(event))
    assert shown.returncode == 0, shown.stderr.decode()
    answer = orjson.loads(shown.stdout)
    assert [m["uid"] for m in answer["metrics"]] == ["eu_calls"]  # the deleted one is not live
    assert answer["metrics"][0]["failed"][0]["value"] == "us-1"
    file = tmp_path / "event.json"
    file.write_bytes(orjson.dumps({**event, "properties": {"region": "eu-1"}}))
    text = tally(fresh_database, "explain", str(file))
    assert text.returncode == 0, text.stderr.decode()
    assert "eu_calls: applied" in text.stdout.decode()
    missing = tally(fresh_database, "explain", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert b"cannot read" in missing.stderr
