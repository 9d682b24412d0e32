"""A seeded, realistic synthetic usage workload, for demos, tests and benches.

Events are 200-400 bytes of JSON with many customers (Zipf-like skew), skewed
event types, mixed-case strings, integer and decimal amounts, and nested
values (an API call's token usage and line items, a snapshot's volume). The
same seed always yields the same events, so a bench and its exactness check
agree.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

EVENT_TYPES = ("api_call", "message_sent", "login", "transfer", "storage_snapshot", "seat_change")
EVENT_TYPE_WEIGHTS = (60, 18, 10, 8, 3, 1)
ENDPOINTS = tuple(
    f"/v1/{name}"
    for name in (
        "charges",
        "customers",
        "invoices",
        "refunds",
        "payouts",
        "balance",
        "events",
        "files",
        "tokens",
        "disputes",
        "products",
        "prices",
        "plans",
        "quotes",
        "orders",
        "taxes",
        "webhooks",
        "reports",
        "accounts",
        "sessions",
    )
)
STATUSES = (200, 200, 200, 200, 201, 204, 400, 404, 429, 500)
CHANNELS = ("SMS", "sms", "Email", "email", "EMAIL", "WhatsApp", "push")
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1", "internal")
PLANS = ("free", "starter", "pro", "enterprise")
TIERS = ("Free", "FREE", "Team", "team", "Business", "Enterprise")
MODELS = ("small-1", "medium-2", "large-3")


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    seed: int = 42
    customers: int = 2000
    users_per_customer: int = 50
    # Event times spread over this many seconds ending at `end` (POSIX).
    end: float = 0.0
    span_seconds: float = 6 * 3600.0
    duplicate_ratio: float = 0.0
    # A producer's stream instead of a shuffled backlog: event n's time is
    # `end - span_seconds + span_seconds * n / count`, increasing with n, so a
    # single producer writes every partition in event-time order; except a
    # late tail: `late_share` of the events are up to `late_seconds` older.
    ordered: bool = False
    late_share: float = 0.0
    late_seconds: float = 0.0


def _customer_weights(count: int) -> list[float]:
    return [1.0 / (rank + 1) ** 0.8 for rank in range(count)]


def events(workload: Workload, count: int) -> Iterator[dict[str, Any]]:
    """`count` event documents; with duplicate_ratio, some repeat an earlier id."""
    rng = random.Random(workload.seed)
    # Nested values draw from their own stream, so the main stream (ids,
    # times, customers, flat properties) stays what earlier runs produced.
    nested = random.Random(workload.seed ^ 0x6E65_7374)
    end = workload.end or datetime.now(UTC).timestamp()
    customers = [f"cust_{n:05d}" for n in range(workload.customers)]
    weights = _customer_weights(workload.customers)
    sent: list[dict[str, Any]] = []
    for n in range(count):
        if sent and workload.duplicate_ratio and rng.random() < workload.duplicate_ratio:
            yield rng.choice(sent)
            continue
        customer = rng.choices(customers, weights)[0]
        event_type = rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS)[0]
        moment = datetime.fromtimestamp(_event_time(rng, workload, end, n, count), UTC)
        document = {
            "id": f"evt_{workload.seed:x}_{n:010d}_{rng.getrandbits(40):010x}",
            "eventType": event_type,
            "customerId": customer,
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "properties": _properties(rng, nested, event_type, customer, workload),
        }
        if workload.duplicate_ratio and len(sent) < 100_000:
            sent.append(document)
        yield document


def _event_time(rng: random.Random, workload: Workload, end: float, n: int, count: int) -> float:
    if not workload.ordered:
        return end - rng.random() * workload.span_seconds  # the shuffled backlog
    moment = end - workload.span_seconds + workload.span_seconds * n / count
    if workload.late_share and rng.random() < workload.late_share:
        moment -= rng.random() * workload.late_seconds
    return moment


def _properties(
    rng: random.Random,
    nested: random.Random,
    event_type: str,
    customer: str,
    workload: Workload,
) -> dict[str, Any]:
    user = f"user{rng.randrange(workload.users_per_customer)}@{customer}.example.com"
    if rng.random() < 0.3:
        user = user.upper() if rng.random() < 0.5 else user.capitalize()
    if event_type == "api_call":
        call: dict[str, Any] = {
            "endpoint": rng.choice(ENDPOINTS),
            "method": rng.choice(("GET", "GET", "POST", "DELETE")),
            "status": rng.choice(STATUSES),
            "latency_ms": round(rng.lognormvariate(3, 0.6), 2),
            "bytes": rng.randrange(200, 50_000),
            "region": rng.choice(REGIONS),
            "user": user,
        }
        if nested.random() < 0.3:  # a model call: LLM-style usage, nested
            usage: dict[str, Any] = {
                "input_tokens": nested.randrange(1, 8000),
                "output_tokens": nested.randrange(0, 2000),
            }
            if nested.random() < 0.25:
                usage["cached"] = True
            call["usage"] = usage
            call["model"] = {"name": nested.choice(MODELS)}
            call["items"] = [{"sku": f"sku-{nested.randrange(12)}"}]
        return call
    if event_type == "message_sent":
        return {
            "channel": rng.choice(CHANNELS),
            "segments": rng.randrange(1, 5),
            "recipient_country": rng.choice(("GB", "DE", "US", "IN", "NP", "BR")),
            "user": user,
        }
    if event_type == "login":
        return {
            "email": user,
            "method": rng.choice(("password", "sso", "magic_link")),
            "mfa": rng.random() < 0.4,
        }
    if event_type == "transfer":
        gigabytes = f"{rng.randrange(0, 20_000) / 1000:.3f}"
        return {
            "gigabytes": gigabytes if rng.random() < 0.5 else float(gigabytes),
            "region": rng.choice(REGIONS),
            "direction": rng.choice(("egress", "ingress")),
        }
    if event_type == "storage_snapshot":
        return {
            "gb_stored": round(rng.uniform(0, 5000), 4),
            "tier": rng.choice(("hot", "cold")),
            "volume": {
                "class": nested.choice(("ssd", "hdd")),
                "zone": nested.choice(("a", "b", "c")),
            },
        }
    return {"seats": rng.randrange(1, 200), "plan": rng.choice(PLANS), "tier": nested.choice(TIERS)}


def encoded(workload: Workload, count: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs as a producer keyed by customerId would send them."""
    return [(doc["customerId"].encode(), orjson.dumps(doc)) for doc in events(workload, count)]


MODEL_DEFINITIONS: tuple[dict[str, Any], ...] = (
    {
        "uid": "storage_average",
        "name": "GB stored (average of snapshots), by volume class and zone",
        "eventType": "storage_snapshot",
        "aggregationType": "AVG",
        "aggregationProperty": "gb_stored",
        "metricType": "GROUPED",
        "groupingProperties": ["$.volume.class", "$.volume.zone"],
        "timeUnits": ["day", "month"],
    },
    {
        "uid": "storage_low",
        "name": "GB stored (least of snapshots)",
        "eventType": "storage_snapshot",
        "aggregationType": "MIN",
        "aggregationProperty": "gb_stored",
        "timeUnits": ["day"],
    },
    {
        "uid": "seats",
        "name": "Seats (latest)",
        "eventType": "seat_change",
        "aggregationType": "LATEST",
        "aggregationProperty": "seats",
        "timeUnits": ["day", "month"],
    },
    {
        "uid": "seats_peak",
        "name": "Seats (peak)",
        "eventType": "seat_change",
        "aggregationType": "MAX",
        "aggregationProperty": "seats",
        "timeUnits": ["month"],
        "timezone": "America/New_York",
    },
    {
        "uid": "plan_tier",
        "name": "Plan tier (latest)",
        "eventType": "seat_change",
        "aggregationType": "LATEST",
        "valueType": "STRING",
        "aggregationProperty": "tier",
        "caseSensitive": False,
        "timeUnits": ["day", "month"],
    },
    {
        "uid": "input_tokens",
        "name": "Input tokens by model, region and first item",
        "eventType": "api_call",
        "aggregationType": "SUM",
        "aggregationProperty": "$.usage.input_tokens",
        "metricType": "GROUPED",
        "groupingProperties": ["$.model.name", "region", "$.items[0].sku"],
        "timeUnits": ["hour", "day", "month"],
    },
    {
        "uid": "output_tokens_peak",
        "name": "Largest output of one call",
        "eventType": "api_call",
        "aggregationType": "MAX",
        "aggregationProperty": "$['usage']['output_tokens']",
        "timeUnits": ["day"],
        "timezone": "Asia/Kathmandu",
    },
    {
        "uid": "cached_calls",
        "name": "Model calls served from cache",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "presenceFilters": {"$.usage.cached": True},
        "timeUnits": ["day"],
    },
    {
        "uid": "plain_calls",
        "name": "Calls that used no model",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "presenceFilters": {"$.usage.input_tokens": False},
        "propertyFilters": {"method": ["GET"]},
        "timeUnits": ["day"],
    },
    {
        "uid": "transfer_average",
        "name": "Average GB per transfer, by direction and region",
        "eventType": "transfer",
        "aggregationType": "AVG",
        "aggregationProperty": "gigabytes",
        "metricType": "GROUPED",
        "groupingProperties": ["direction", "region"],
        "timeUnits": ["day", "month"],
        "timezone": "Europe/Berlin",
    },
)
"""Ten definitions with the kinds and shapes beyond COUNT, SUM and UNIQUE:
MAX, MIN, AVG, LATEST (number and STRING), several grouping keys, paths into
nested properties, and presence filters."""


def model_definitions() -> list[dict[str, Any]]:
    return [dict(d) for d in MODEL_DEFINITIONS]


def metric_definitions(count: int) -> list[dict[str, Any]]:
    """`count` realistic definitions over the synthetic workload (1, 10, 50...).

    Kinds, grouping, filters, case folding, units and zones are mixed; beyond
    the first ten, variants of them with other zones and filters.
    """
    base: list[dict[str, Any]] = [
        {
            "uid": "api_calls",
            "name": "API calls",
            "eventType": "api_call",
            "aggregationType": "COUNT",
            "timeUnits": ["day", "month"],
        },
        {
            "uid": "api_calls_by_endpoint",
            "name": "API calls by endpoint",
            "eventType": "api_call",
            "aggregationType": "COUNT",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "propertyFilters": {"status": [200, 201, 204]},
            "timeUnits": ["hour", "day", "month"],
        },
        {
            "uid": "api_bytes",
            "name": "API response bytes",
            "eventType": "api_call",
            "aggregationType": "SUM",
            "aggregationProperty": "bytes",
            "timeUnits": ["day", "month"],
            "timezone": "America/Los_Angeles",
        },
        {
            "uid": "active_api_users",
            "name": "Active API users by region",
            "eventType": "api_call",
            "aggregationType": "UNIQUE",
            "aggregationProperty": "user",
            "caseSensitive": False,
            "metricType": "GROUPED",
            "groupingProperty": "region",
            "timeUnits": ["day", "month"],
        },
        {
            "uid": "messages_by_channel",
            "name": "Messages by channel",
            "eventType": "message_sent",
            "aggregationType": "COUNT",
            "metricType": "GROUPED",
            "groupingProperty": "channel",
            "caseSensitive": False,
            "timeUnits": ["day", "week", "month"],
            "timezone": "Asia/Kathmandu",
        },
        {
            "uid": "message_segments",
            "name": "Message segments",
            "eventType": "message_sent",
            "aggregationType": "SUM",
            "aggregationProperty": "segments",
            "propertyFilters": {"recipient_country": ["US", "GB"]},
            "propertiesToNegate": ["recipient_country"],
            "timeUnits": ["day", "month"],
        },
        {
            "uid": "monthly_active_users",
            "name": "Monthly active users",
            "eventType": "login",
            "aggregationType": "UNIQUE",
            "aggregationProperty": "email",
            "caseSensitive": False,
            "timeUnits": ["day", "month"],
            "timezone": "Europe/Berlin",
        },
        {
            "uid": "gb_transferred",
            "name": "GB transferred",
            "eventType": "transfer",
            "aggregationType": "SUM",
            "aggregationProperty": "gigabytes",
            "metricType": "GROUPED",
            "groupingProperty": "direction",
            "propertyFilters": {"region": ["internal"]},
            "propertiesToNegate": ["region"],
            "timeUnits": ["day", "month", "quarter"],
            "timezone": "Europe/Berlin",
        },
        {
            "uid": "gb_stored",
            "name": "GB stored (peak of snapshots)",
            "eventType": "storage_snapshot",
            "aggregationType": "MAX",
            "aggregationProperty": "gb_stored",
            "timeUnits": ["hour", "day"],
        },
        {
            "uid": "seat_changes",
            "name": "Seat changes by plan",
            "eventType": "seat_change",
            "aggregationType": "COUNT",
            "metricType": "GROUPED",
            "groupingProperty": "plan",
            "timeUnits": ["month", "year"],
            "timezone": "America/New_York",
        },
    ]
    zones = ("UTC", "Australia/Lord_Howe", "America/Sao_Paulo", "Asia/Tokyo", "Europe/London")
    result = []
    for n in range(count):
        definition = dict(base[n % len(base)])
        if n >= len(base):
            definition["uid"] = f"{definition['uid']}_{n}"
            definition["name"] = f"{definition['name']} ({n})"
            definition["timezone"] = zones[n % len(zones)]
        result.append(definition)
    return result
