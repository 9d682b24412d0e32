"""MAX, MIN, AVG and LATEST rollups through the real flush into the real
PostgreSQL: however the events are split into flushes and in whatever order
the flushes land, the stored rows are the ones a single pass over all the
events gives (computed here independently, event by event), by both ways the
flush sends rows (COPY into TEMP tables, and arrays).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
import pytest_asyncio

from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.store import flush
from tally.store.flush import write_flush
from tally.store.migrate import migrate
from tally.store.pool import connect

pytestmark = pytest.mark.asyncio(loop_scope="function")

NOW = 1_795_000_000.0  # 2026-11-18T08:26:40Z
DAY = 1_794_960_000  # its UTC day
SPECS: list[tuple[Any, ...]] = [
    ("peak", "u", "MAX", ("usage", "gb"), [], True, [], ["day"], "UTC", "NUMBER", []),
    ("low", "u", "MIN", ("usage", "gb"), [], True, [], ["day"], "UTC", "NUMBER", []),
    ("mean", "u", "AVG", ("usage", "gb"), [], True, [], ["day"], "UTC", "NUMBER", []),
    ("seats", "u", "LATEST", ("seats",), [], True, [], ["day"], "UTC", "NUMBER", []),
    ("tier", "u", "LATEST", ("plan",), [], False, [], ["day"], "UTC", "STRING", []),
]
# Ties on the timestamp are broken by id, by code point: "B" < "a" < "z" < "é".
IDS = ["a", "B", "é", "z", "aa", "Z9"]
AMOUNTS = [
    "0.0000000000005",
    "-0.0000000000005",
    "1",
    "2",
    "-7.25",
    "1e-30",
    "123456789.123456789",
    "0",
]
PLANS = ["Pro", "BASIC", "Team", "pro"]


@pytest_asyncio.fixture(params=["C.UTF-8", "icu-en-US"])
async def database(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[str]:
    """A new database in the C.UTF-8 locale, or with ICU's English collation,
    which orders "a" before "B": LATEST's ties must not follow it."""
    name = f"tally_t_{uuid.uuid4().hex[:16]}"
    locale = (
        "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        if request.param.startswith("icu")
        else "LOCALE 'C.UTF-8'"
    )
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 {locale}')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _events(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        second = DAY + rng.choice([100, 100, 200, 300])  # many ties
        out.append(
            {
                "id": f"{rng.choice(IDS)}{n // len(IDS)}"
                if rng.random() < 0.5
                else rng.choice(IDS),
                "eventType": "u",
                "customerId": rng.choice(["c1", "c2"]),
                "timestamp": f"2026-11-18T00:0{(second - DAY) // 60}:{(second - DAY) % 60:02d}Z",
                "properties": {
                    "usage": {"gb": rng.choice(AMOUNTS)},
                    "seats": rng.randint(-3, 40),
                    "plan": rng.choice(PLANS),
                },
            }
        )
    # Distinct ids: dedup is not what this test is about.
    seen: dict[str, int] = {}
    for event in out:
        seen[event["id"]] = seen.get(event["id"], 0) + 1
        if seen[event["id"]] > 1:
            event["id"] = f"{event['id']}#{seen[event['id']]}"
    return out


def _expected(events: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(uid, customer) -> (value, value_text, value_sum, events, latest_at, latest_id)."""
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_customer.setdefault(event["customerId"], []).append(event)
    for customer, mine in by_customer.items():
        amounts = [Decimal(e["properties"]["usage"]["gb"]) for e in mine]
        total = sum(amounts, Decimal(0))
        mean = (total / len(amounts)).quantize(Decimal("1e-12"), ROUND_HALF_UP) if amounts else None
        # Exact to 12 decimals: Decimal's context has 28 digits, enough here.
        last = max(mine, key=lambda e: (e["timestamp"], [ord(c) for c in e["id"]]))
        at = (
            int(DAY + int(last["timestamp"][14:16]) * 60 + int(last["timestamp"][17:19]))
            * 1_000_000
        )
        n = len(mine)
        rows[("peak", customer)] = (max(amounts), None, None, n, None, None)
        rows[("low", customer)] = (min(amounts), None, None, n, None, None)
        rows[("mean", customer)] = (mean, None, total, n, None, None)
        rows[("seats", customer)] = (
            Decimal(last["properties"]["seats"]),
            None,
            None,
            n,
            at,
            last["id"],
        )
        rows[("tier", customer)] = (
            None,
            last["properties"]["plan"].casefold(),
            None,
            n,
            at,
            last["id"],
        )
    return rows


async def _stored(connection: Any) -> dict[tuple[str, str], tuple[Any, ...]]:
    records = await connection.fetch(
        "SELECT metric_uid, customer_id, value, value_text, value_sum, event_count, latest_at,"
        " latest_id FROM tally.metric_values"
    )
    return {(r[0], r[1]): tuple(r[2:]) for r in records}


def _normal(rows: dict[tuple[str, str], tuple[Any, ...]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Decimals compared by value (12 stored decimals are trimmed)."""
    return {
        key: tuple(v.normalize() if isinstance(v, Decimal) else v for v in row)
        for key, row in rows.items()
    }


@pytest.mark.parametrize("staged", [True, False], ids=["copy", "arrays"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_split_and_reordered_flushes_store_what_one_pass_gives(
    database: str, staged: bool, seed: int
) -> None:
    events = _events(seed, 400)
    core = new_core()
    core.set_metrics(SPECS)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(events)), 5))
    parts = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    rng.shuffle(parts)
    connection = await connect(database)
    try:
        await migrate(connection)
        for part in parts:
            deltas = aggregate(core, [orjson.dumps(e) for e in part], NOW, DecodeLimits())
            if staged:
                await write_flush(connection, [], deltas, "w")
            else:
                async with connection.transaction():
                    await flush._write_kinds(connection, deltas, staged=False)
        assert _normal(await _stored(connection)) == _normal(_expected(events))
    finally:
        await connection.close()


async def test_a_later_flush_with_older_events_changes_no_latest(fresh_database: str) -> None:
    core = new_core()
    core.set_metrics(SPECS)

    def deltas(stamp: str, event_id: str, seats: int, plan: str) -> Deltas:
        event = {
            "id": event_id,
            "eventType": "u",
            "customerId": "c",
            "timestamp": stamp,
            "properties": {"usage": {"gb": seats}, "seats": seats, "plan": plan},
        }
        return aggregate(core, [orjson.dumps(event)], NOW, DecodeLimits())

    connection = await connect(fresh_database)
    try:
        await migrate(connection)
        await write_flush(connection, [], deltas("2026-11-18T05:00:00Z", "b", 10, "Team"), "w")
        await write_flush(connection, [], deltas("2026-11-18T04:00:00Z", "z", 99, "Old"), "w")
        await write_flush(connection, [], deltas("2026-11-18T05:00:00Z", "a", 50, "Tie"), "w")
        rows = await _stored(connection)
        assert rows[("seats", "c")][0] == 10
        assert rows[("seats", "c")][3] == 3
        assert rows[("tier", "c")][1] == "team"
        assert rows[("peak", "c")][0] == 99
        assert rows[("low", "c")][0] == 10
        assert rows[("mean", "c")][0] == Decimal(53)
        assert rows[("mean", "c")][2] == 159
    finally:
        await connection.close()
