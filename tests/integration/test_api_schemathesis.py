"""schemathesis (every check, every operation) against `tally api serve` on a
real port and a real database, driven by the checked-in schemas/openapi.json.

Bounded for CI: a fixed number of examples per operation and a time budget.
`TALLY_SCHEMATHESIS_SEED` picks another seed (default fixed, so CI is
repeatable); `TALLY_SCHEMATHESIS_EXAMPLES` another number of examples.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MakeTopic
from tests.integration.test_api_support import (
    ADMIN,
    ADMIN_TOKEN,
    CALLS,
    ROOT,
    TOKENS,
    ApiProcess,
    open_api,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

SEED = os.environ.get("TALLY_SCHEMATHESIS_SEED", "20261125")
EXAMPLES = os.environ.get("TALLY_SCHEMATHESIS_EXAMPLES", "30")
TIME_BUDGET_S = 600  # a guard against a hang, not a speed check: the run is bounded by the number
# of examples, and on a loaded 2-core machine it took 130-150 s

# Cursors are opaque: a string the API did not issue is refused (422) although it
# matches the pattern. Each list names its cursors with a `format`; the fuzzing
# phase makes real ones from these strategies, and the coverage phase's
# schema-valid `after` values (built from the pattern alone) are swapped for a
# real cursor before they are sent. Its pattern-breaking values are kept.
#
# The stateful phase checks that a deleted resource is gone and a created one is
# there. Two things it cannot know are by design: an Idempotency-Key that repeats
# replays the first response even when that metric was deleted since, and
# `includeDeleted=true` asks for deleted metrics. There, keys are made unique and
# `includeDeleted` is left out.
HOOKS = """
import uuid

import schemathesis
from hypothesis import strategies as st

from tally.api.cursor import ADJUSTMENTS, METRIC_VALUES, USAGE_METRICS, cursor_format, encode
from tally.store.metric_values import MAX_MICROS, MIN_MICROS

text = st.text(st.characters(codec="utf-8", exclude_characters="\\x00"), max_size=24)
schemathesis.openapi.format(
    cursor_format(USAGE_METRICS), text.map(lambda uid: encode(USAGE_METRICS, [uid]))
)
schemathesis.openapi.format(
    cursor_format(METRIC_VALUES),
    st.tuples(text, text, text, st.integers(MIN_MICROS, MAX_MICROS), text).map(
        lambda key: encode(METRIC_VALUES, key)
    ),
)
schemathesis.openapi.format(
    cursor_format(ADJUSTMENTS),
    st.integers(-(2**63), 2**63 - 1).map(lambda seq: encode(ADJUSTMENTS, [seq])),
)
FIRST = {
    "/usage-metrics": encode(USAGE_METRICS, [""]),
    "/metric-values": encode(METRIC_VALUES, ["", "", "", MIN_MICROS, ""]),
    "/metric-values/adjustments": encode(ADJUSTMENTS, [0]),
}


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if meta.phase.name == "coverage" and case.query and "after" in case.query:
        case.query["after"] = FIRST[case.operation.path]
    if meta.phase.name == "stateful":
        if case.headers and "Idempotency-Key" in case.headers:
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        if case.query:
            case.query.pop("includeDeleted", None)
"""

# Where the schema cannot say everything the server checks, a schema-valid
# request may still be refused with 422 (naming the field):
# - POST /usage-metrics: timezone must be an IANA zone, propertiesToNegate keys
#   must be keys of propertyFilters, and an Idempotency-Key reused with another body;
# - POST /metric-values/adjustments: the rules that depend on the stored metric
#   (it exists, has the time unit, periodStart starts a period in its zone, a
#   COUNT or UNIQUE changes by whole numbers and stays >= 0), a zero delta, and a
#   reused Idempotency-Key;
# - PATCH /usage-metrics/{idOrUid}: a deletedAt outside the years 1-9999 in UTC;
# - POST /metrics/values/... and /api/metrics/values/...: the metric exists, is
#   EXTERNAL, has that context_type and time unit, and takes that value; 409 for
#   a period that has a value;
# - the seed paths (Squad, Exante, Cuoral): a derived or given uid that exists is
#   409, and the contract's cross-field rules (a snapshot is LATEST, ...) 422;
# - POST /events: the worker's decoder judges each event (a timestamp outside
#   the lateness window, say), and a single refused event answers 422;
# - POST /events/explain: a ?partition= the topic does not have (the schema
#   cannot know the topic's partition count).
CONFIG = """
[[operations]]
include-name = ["POST /usage-metrics", "POST /metric-values/adjustments", "PATCH /usage-metrics/{idOrUid}", "POST /events", "POST /events/explain", "POST /metrics/values/{context_type}/{entity_uid}", "POST /api/metrics/values/{context_type}/{entity_uid}", "POST /api/metrics", "POST /organisations/{orgId}/workspaces/{workspaceId}/metrics", "POST /external/v1/external/v1/customers/metrics"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

# Over the batch limit (maxItems) is 413, like a body over 1 MiB.
[[operations]]
include-name = "POST /events"
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"]

# A usage window that is not a union of stored periods, and a summary of a
# metric without day rollups, are refused (422) by the data, not the schema.
[[operations]]
include-name = ["GET /usage-metrics/{uid}/usage", "GET /usage-metrics/{uid}/summary"]
parameters = { uid = "seeded_calls" }
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422"]

[[operations]]
include-name = "GET /usage-metrics/{idOrUid}"
parameters = { idOrUid = "seeded_calls" }

[[operations]]
include-name = "PATCH /usage-metrics/{idOrUid}"
parameters = { idOrUid = "seeded_patch" }
"""


async def seed(dsn: str) -> None:
    """Metrics, a rollup and an adjustment, so reads and changes find something."""
    async with open_api(dsn) as api:
        for uid in ("seeded_calls", "seeded_patch"):
            assert (await api.create({**CALLS, "uid": uid})).status_code == 201
        made = await api.client.post(
            "/metric-values/adjustments",
            json={
                "metricUid": "seeded_calls",
                "customerId": "acme",
                "timeUnit": "day",
                "periodStart": "2026-03-01T00:00:00Z",
                "delta": "5",
                "reason": "seed",
            },
            headers={**ADMIN, "Idempotency-Key": "seed"},
        )
        assert made.status_code == 201, made.text


async def test_schemathesis_finds_no_failures(
    fresh_database: str, kafka_bootstrap: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    await seed(fresh_database)
    topic = await make_topic(1)  # where POST /events produces (no 503 for a missing topic)
    hooks = tmp_path / "tally_st_hooks.py"
    hooks.write_text(HOOKS)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {
        "TALLY_DATABASE_URL": fresh_database,
        "TALLY_API_TOKENS": TOKENS,
        "TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TALLY_TOPIC": topic,
    }
    with ApiProcess(["api", "serve"], env, tmp_path / "api.log") as server:
        base_url = await server.base_url()
        command = [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            str(ROOT / "schemas" / "openapi.json"),
            "--url",
            base_url,
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--output-truncate",
            "false",
        ]
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), TIME_BUDGET_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        elapsed = time.monotonic() - started
        report = output.decode(errors="replace")
        print(f"schemathesis ran {elapsed:.0f}s (seed {SEED}):\n{report[-2500:]}")
        assert process.returncode == 0, report[-20000:]
        # "1067 generated, 1067 passed, 12 skipped": every generated case passed.
        assert re.search(r"\b(\d+) generated, \1 passed\b", report), report[-5000:]
    assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    assert "request failed" not in log, log[-5000:]
