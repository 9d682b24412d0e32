"""`tally explain`: what the worker's core does with one event, per live metric
(no services). Each answer is checked against the core's own aggregation of
the same event with every metric loaded, as a worker runs it."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tally.contracts.metric import parse_metric
from tally.core.engine import aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.explain import NotRunning, explain, render
from tally.core.metrics import MetricIndex

NOW = time.time()
LIMITS = DecodeLimits()
BASE: dict[str, Any] = {"eventType": "api_call", "timeUnits": ["day"]}
METRICS = [
    parse_metric({**BASE, "uid": "calls", "name": "Calls", "aggregationType": "COUNT"}),
    parse_metric(
        {
            **BASE,
            "uid": "eu_calls",
            "name": "EU calls",
            "aggregationType": "COUNT",
            "propertyFilters": {"region": ["eu-1", "eu-2"], "tier": ["pro"]},
        }
    ),
    parse_metric(
        {
            **BASE,
            "uid": "tokens",
            "name": "Tokens",
            "aggregationType": "SUM",
            "aggregationProperty": "tokens",
        }
    ),
    parse_metric(
        {**BASE, "uid": "other", "name": "Other", "eventType": "upload", "aggregationType": "COUNT"}
    ),
]


def raw(**properties: Any) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW))
    return orjson.dumps(
        {
            "id": "e-1",
            "eventType": "api_call",
            "customerId": "acme",
            "timestamp": stamp,
            "properties": properties,
        }
    )


def worker_view(value: bytes) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    core = new_core(MetricIndex(METRICS))
    deltas = aggregate(core, [value], NOW, LIMITS)
    return dict(deltas.applied), dict(deltas.skipped)


def outcomes(answer: dict[str, Any]) -> dict[str, str]:
    return {m["uid"]: m["outcome"] for m in answer["metrics"]}


def agrees_with_the_worker(value: bytes, answer: dict[str, Any]) -> None:
    applied, skipped = worker_view(value)
    for metric in answer["metrics"]:
        uid = metric["uid"]
        assert (metric["outcome"] == "applied") == bool(applied.get(uid)), uid
        skips = {reason for (u, reason), n in skipped.items() if u == uid and n}
        assert skips == ({metric["skipReason"]} if "skipReason" in metric else set()), uid


def test_a_match_a_filter_miss_and_a_skip() -> None:
    value = raw(region="us-1", tier="pro", tokens="many")
    answer = explain(value, METRICS, NOW, LIMITS)
    assert answer["decoded"]
    assert outcomes(answer) == {"calls": "applied", "eu_calls": "unmatched", "tokens": "skipped"}
    (miss,) = answer["metrics"][1]["failed"]
    assert miss == {
        "filter": "region",
        "negated": False,
        "expected": ["eu-1", "eu-2"],
        "value": "us-1",
    }
    assert answer["metrics"][2]["skipReason"]
    agrees_with_the_worker(value, answer)
    text = render(answer)
    assert "eu_calls: unmatched" in text
    assert "filter region: the value is 'us-1'" in text


def test_every_filter_that_fails_is_named() -> None:
    value = raw(tier="free", tokens=3)
    answer = explain(value, METRICS, NOW, LIMITS)
    assert outcomes(answer) == {"calls": "applied", "eu_calls": "unmatched", "tokens": "applied"}
    assert [(m["filter"], m["value"]) for m in answer["metrics"][1]["failed"]] == [
        ("region", None),
        ("tier", "free"),
    ]
    agrees_with_the_worker(value, answer)


def test_an_event_no_metric_takes_and_a_refused_event() -> None:
    unmatched = raw().replace(b"api_call", b"download")
    answer = explain(unmatched, METRICS, NOW, LIMITS)
    assert answer["decoded"]
    assert answer["metrics"] == []
    assert "no live metric has eventType download" in render(answer)
    refused = explain(b'{"id": "x"}', METRICS, NOW, LIMITS)
    assert (refused["decoded"], refused["reason"]) == (False, "missing_field")
    assert "refused: missing_field" in render(refused)


def test_a_presence_filter_that_fails_is_named() -> None:
    metrics = [
        parse_metric(
            {
                **BASE,
                "uid": "with_plan",
                "name": "With a plan",
                "aggregationType": "COUNT",
                "presenceFilters": {"plan": True},
            }
        )
    ]
    answer = explain(raw(tokens=1), metrics, NOW, LIMITS)
    (metric,) = answer["metrics"]
    assert metric["outcome"] == "unmatched"
    assert metric["failed"] == [{"presence": "plan", "mustBePresent": True, "value": None}]
    assert explain(raw(plan="pro"), metrics, NOW, LIMITS)["metrics"][0]["outcome"] == "applied"
    assert "presence plan: must be present" in render(answer)


def test_the_rollups_an_applied_metric_would_change_come_from_the_core() -> None:
    kinds = [
        parse_metric(
            {
                **BASE,
                "uid": "tokens_by_model",
                "name": "Tokens by model",
                "aggregationType": "SUM",
                "aggregationProperty": "tokens",
                "metricType": "GROUPED",
                "groupingProperty": "model",
            }
        ),
        parse_metric(
            {
                **BASE,
                "uid": "users",
                "name": "Users",
                "aggregationType": "UNIQUE",
                "aggregationProperty": "user",
            }
        ),
        parse_metric(
            {
                **BASE,
                "uid": "peak",
                "name": "Peak",
                "aggregationType": "MAX",
                "aggregationProperty": "tokens",
                "timeUnits": ["hour", "day"],
            }
        ),
    ]
    value = raw(tokens=7, model="m-1", user="u-9")
    answer = explain(value, [*METRICS, *kinds], NOW, LIMITS)
    by_uid = {m["uid"]: m for m in answer["metrics"]}
    (calls,) = by_uid["calls"]["rollups"]
    assert (calls["timeUnit"], calls["add"], calls["groupBy"]) == ("day", "1", [])
    (tokens,) = by_uid["tokens_by_model"]["rollups"]
    assert (tokens["add"], tokens["groupKey"], tokens["groupBy"]) == ("7", "m-1", ["model"])
    assert by_uid["users"]["rollups"][0]["member"] == "u-9"
    assert [(r["timeUnit"], r["candidate"]) for r in by_uid["peak"]["rollups"]] == [
        ("day", "7"),
        ("hour", "7"),
    ]
    assert "rollups" not in by_uid["eu_calls"]
    # The same keys as the worker's own Deltas with every metric loaded.
    worker = aggregate(new_core(MetricIndex([*METRICS, *kinds])), [value], NOW, LIMITS)
    keys = {(uid, unit, group) for (uid, _c, group, unit, _s) in worker.snapshot()}
    shown = {
        (m["uid"], r["timeUnit"], r["groupKey"])
        for m in answer["metrics"]
        for r in m.get("rollups", [])
    }
    assert shown == keys
    text = render(answer)
    assert "group model='m-1': SUM +7" in text
    assert tokens["periodStart"].endswith("T00:00:00Z")
    assert "UNIQUE member 'u-9'" in text


def test_avg_and_latest_rollups_show_the_event_as_their_candidate() -> None:
    kinds = [
        parse_metric(
            {
                **BASE,
                "uid": f"{kind.lower()}_tokens",
                "name": kind,
                "aggregationType": kind,
                "aggregationProperty": "tokens",
            }
        )
        for kind in ("AVG", "LATEST", "MIN")
    ]
    answer = explain(raw(tokens="2.5"), kinds, NOW, LIMITS)
    shown = {m["uid"]: m["rollups"] for m in answer["metrics"]}
    assert shown["avg_tokens"][0]["candidate"] == "2.5"
    assert shown["min_tokens"][0]["candidate"] == "2.5"
    (latest,) = shown["latest_tokens"]
    assert (latest["candidate"], latest["latestId"]) == ("2.5", "e-1")
    assert "LATEST candidate '2.5'" in render(answer)


def test_a_metric_workers_refuse_is_not_running_with_why_among_its_event_types() -> None:
    refused = [
        NotRunning("aaa_mars", "api_call", "unknown_timezone", "unknown zone Mars/Olympus"),
        NotRunning("zz_broken", None, "invalid_definition", "aggregationType: Field required"),
        NotRunning("uploads_mars", "upload", "unknown_timezone", "unknown zone Mars/Olympus"),
    ]
    answer = explain(raw(tokens=3), METRICS, NOW, LIMITS, not_running=refused)
    # Of the event's type only, in uid order with the metrics that run.
    assert [(m["uid"], m["outcome"]) for m in answer["metrics"]] == [
        ("aaa_mars", "not_running"),
        ("calls", "applied"),
        ("eu_calls", "unmatched"),
        ("tokens", "applied"),
    ]
    assert answer["metrics"][0]["reason"] == "unknown_timezone"
    shown = render(answer)
    assert "aaa_mars: not_running: workers refuse it (unknown_timezone: unknown zone" in shown
    assert "zz_broken" not in shown
    assert "uploads_mars" not in shown
