"""Synthetic flush shapes for `tally.bench writepath`: the rollups of the ten
metrics of `tally.synthetic.metric_definitions(10)` (24 metric x time-unit
tables, their groups), with a known part already stored.

A rollup is a slot of one table: slot s is customer s // groups and group
s % groups. Each table's first `stored` slots are in the database. A flush
of N rollups takes N / 24 from each table: for COUNT and SUM, half of them
stored slots (their rows are updated) and half the next new slots (their
rows are inserted); for UNIQUE, stored slots only, each with `members`
members of which one is new and the others stored (80 % with 5), as a live
workload's active users come back flush after flush.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal

from tally.core.aggregate import Deltas, Table
from tally.core.metrics import COUNT, SUM, UNIQUE
from tally.store.member_cache import MemberRollup
from tally.synthetic import ENDPOINTS, PLANS, REGIONS, metric_definitions

NOW = 1_795_000_000  # a fixed "now": the current periods' starts derive from it
UNIT_SECONDS = {
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 31 * 86400,
    "quarter": 92 * 86400,
    "year": 366 * 86400,
}
GROUPS: dict[str | None, tuple[str, ...]] = {
    None: ("",),
    "endpoint": ENDPOINTS,
    "region": REGIONS,
    "channel": ("sms", "email", "whatsapp", "push"),  # case-folded
    "direction": ("egress", "ingress"),
    "plan": PLANS,
}
KINDS = {"COUNT": COUNT, "SUM": SUM, "UNIQUE": UNIQUE}


def customer(n: int) -> str:
    return f"cust_{n:06d}"


def member(n: int, customer_id: str) -> str:
    return f"user{n}@{customer_id}.example.com"


@dataclass(slots=True)
class ShapeTable:
    uid: str
    unit: str
    kind: int
    groups: tuple[str, ...]
    start: int
    end: int
    stored: int = 0  # slots [0, stored) are in the database
    members: dict[int, int] = field(default_factory=dict)  # UNIQUE slot -> members stored

    def key(self, slot: int) -> tuple[str, str, int]:
        width = len(self.groups)
        return customer(slot // width), self.groups[slot % width], self.start


def tables() -> list[ShapeTable]:
    found = []
    for d in metric_definitions(10):
        for unit in d["timeUnits"]:
            length = UNIT_SECONDS[unit]
            start = NOW - NOW % length
            groups = GROUPS[d.get("groupingProperty")]
            found.append(
                ShapeTable(
                    d["uid"], unit, KINDS[d["aggregationType"]], groups, start, start + length
                )
            )
    return found


def prefill_sql(
    table: ShapeTable, slots: int, members: int
) -> list[tuple[str, tuple[object, ...]]]:
    """Statements that store `slots` rollups of `table` (and `members`
    members each, if UNIQUE), as the flushes would have."""
    table.stored = slots
    width = len(table.groups)
    rollup = (
        "SELECT $1::text AS uid, 'cust_' || lpad((s / $3)::text, 6, '0') AS customer,"
        " ($4::text[])[s % $3 + 1] AS grp, s FROM generate_series(0, $2 - 1) AS s"
    )
    args: tuple[object, ...] = (table.uid, slots, width, list(table.groups))
    statements = [
        (
            "INSERT INTO tally.metric_values"
            " SELECT r.uid, r.customer, r.grp, $5, to_timestamp($6), to_timestamp($7), $8::int8, $8::int8, now()"
            f" FROM ({rollup}) AS r",
            (*args, table.unit, table.start, table.end, members if table.kind == UNIQUE else 3),
        )
    ]
    if table.kind == UNIQUE:
        table.members = dict.fromkeys(range(slots), members)
        statements.append(
            (
                "INSERT INTO tally.unique_members"
                " SELECT r.uid, r.customer, $5, to_timestamp($6), r.grp,"
                " 'user' || m || '@' || r.customer || '.example.com'"
                f" FROM ({rollup}) AS r, generate_series(0, $7 - 1) AS m",
                (*args, table.unit, table.start, members),
            )
        )
    return statements


def stored_members(shape: list[ShapeTable]) -> list[MemberRollup]:
    """Every stored member, as the flushes that stored them offered them."""
    rollups: list[MemberRollup] = []
    for table in shape:
        for slot, count in table.members.items():
            c, g, start = table.key(slot)
            rollups.append(
                (
                    (table.uid, c, table.unit, start, g),
                    table.end,
                    [member(n, c) for n in range(count)],
                )
            )
    return rollups


def flush_deltas(shape: list[ShapeTable], rollups: int, members: int, rng: random.Random) -> Deltas:
    """The next flush: about `rollups` rollups over all tables (see the
    module's docstring); moves the tables' stored counts on."""
    deltas = Deltas()
    per_table = max(2, rollups // len(shape))
    for table in shape:
        t = Table(table.uid, table.unit, table.kind)
        t.ends[table.start] = table.end
        if table.kind == UNIQUE:
            for slot in rng.sample(range(table.stored), min(per_table, table.stored)):
                key = table.key(slot)
                held = table.members[slot]
                old = rng.sample(range(held), min(held, members - 1))
                t.rows[key] = [members, {member(n, key[0]) for n in [*old, held]}]
                table.members[slot] = held + 1
        else:
            present = rng.sample(range(table.stored), min(per_table // 2, table.stored))
            new = range(table.stored, table.stored + per_table - len(present))
            table.stored += len(new)
            for slot in [*present, *new]:
                if table.kind == COUNT:
                    t.rows[table.key(slot)] = 3
                else:
                    t.rows[table.key(slot)] = [3, 12, Decimal("0.5")]
        deltas.tables[f"{table.uid}:{table.unit}"] = t
        deltas.size += len(t.rows)
    return deltas
