"""Synthetic flush shapes for `tally.bench writepath`: the rollups of the ten
metrics of `tally.synthetic.metric_definitions(10)` (23 metric x time-unit
tables, their groups), with a known part already stored.

Every flush's Deltas comes from the native core, over events made to give
the shape (the core builds Deltas only from event bytes). Each metric here
has an event type of its own (its uid), so an event feeds one metric, in
every time unit of it; events carry what the metric's filters ask, and all
happen at `NOW`, in the current period of each unit and zone.

A rollup is a slot of one metric: slot s is customer s // groups and group
s % groups, in each of the metric's time units. Each metric's first
`stored` slots are in the database. A flush of N rollups takes N / 23 slots
of each metric (so N / 23 rollups of each table): for COUNT and SUM, half of
them stored slots (their rows are updated) and half the next new slots
(their rows are inserted), one event each; for UNIQUE, stored slots only,
each with `members` members (one event per member) of which one is new and
the others stored (80 % with 5), as a live workload's active users come
back flush after flush.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from tally import _native
from tally.contracts.metric import parse_metric
from tally.core.engine import Core, Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.core.periods import native_bounds
from tally.store.member_cache import MemberRollup
from tally.synthetic import ENDPOINTS, PLANS, REGIONS, metric_definitions

NOW = 1_795_000_000  # a fixed "now": every event happens then
STAMP = datetime.fromtimestamp(NOW, UTC).isoformat()
WIDE = DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)
GROUPS: dict[str | None, tuple[str, ...]] = {
    None: ("",),
    "endpoint": ENDPOINTS,
    "region": REGIONS,
    "channel": ("sms", "email", "whatsapp", "push"),
    "direction": ("egress", "ingress"),
    "plan": PLANS,
}


def customer(n: int) -> str:
    return f"cust_{n:06d}"


def member(n: int, customer_id: str) -> str:
    return f"user{n}@{customer_id}.example.com"


@dataclass(slots=True)
class ShapeMetric:
    uid: str  # also its event type
    kind: str  # COUNT, SUM or UNIQUE
    groups: tuple[str, ...]  # as the core keys them (case-folded if the metric folds)
    group_property: str | None
    value_property: str | None
    fixed: dict[str, object]  # properties every event carries, so the filters match
    periods: list[tuple[str, int, int]]  # (unit, start, end): the period of each unit holding NOW
    stored: int = 0  # slots [0, stored) are in the database
    members: dict[int, int] = field(default_factory=dict)  # UNIQUE slot -> members stored

    def key(self, slot: int) -> tuple[str, str]:
        """The slot's customer and group."""
        width = len(self.groups)
        return customer(slot // width), self.groups[slot % width]

    def event(self, n: int, slot: int, user: str | None = None) -> bytes:
        customer_id, group = self.key(slot)
        properties = dict(self.fixed)
        if self.group_property is not None:
            properties[self.group_property] = group
        if self.value_property is not None:
            properties[self.value_property] = user if self.kind == "UNIQUE" else 0.5
        document = {
            "id": f"{self.uid}_{n}",
            "eventType": self.uid,
            "customerId": customer_id,
            "timestamp": STAMP,
            "properties": properties,
        }
        return orjson.dumps(document)


@dataclass(slots=True)
class Shape:
    """The metrics of the shape, and the core that aggregates their events."""

    metrics: list[ShapeMetric]
    core: Core
    sequence: int = 0  # events made so far: their ids

    @property
    def tables(self) -> int:
        """Metric x time-unit tables: rollups of a slot over all the metric's units."""
        return sum(len(m.periods) for m in self.metrics)


def make_shape(suffix: str = "") -> Shape:
    """The ten synthetic metrics, their uids (and event types) ending in `suffix`."""
    definitions = []
    for d in metric_definitions(10):
        uid = f"{d['uid']}{suffix}"
        definitions.append(parse_metric({**d, "uid": uid, "eventType": uid}))
    metrics = []
    for spec in definitions:
        negated = set(spec.properties_to_negate)
        fixed: dict[str, object] = {
            name: "none of those" if name in negated else values[0]
            for name, values in spec.property_filters.items()
        }
        groups = GROUPS[spec.grouping_property]
        if not spec.case_sensitive:
            groups = tuple(_native.casefold(g) for g in groups)
        periods = []
        for unit in spec.time_units:
            start, end = native_bounds(str(unit), spec.timezone, NOW)
            periods.append((str(unit), start, end))
        metrics.append(
            ShapeMetric(
                spec.uid,
                str(spec.aggregation_type),
                groups,
                spec.grouping_property,
                spec.aggregation_property,
                fixed,
                periods,
            )
        )
    return Shape(metrics, new_core(MetricIndex(definitions)))


def prefill_sql(
    metric: ShapeMetric, slots: int, members: int
) -> list[tuple[str, tuple[object, ...]]]:
    """Statements that store `slots` rollups of each of `metric`'s tables
    (and `members` members each, if UNIQUE), as the flushes would have."""
    metric.stored = slots
    width = len(metric.groups)
    rollup = (
        "SELECT $1::text AS uid, 'cust_' || lpad((s / $3)::text, 6, '0') AS customer,"
        " ($4::text[])[s % $3 + 1] AS grp, s FROM generate_series(0, $2 - 1) AS s"
    )
    args: tuple[object, ...] = (metric.uid, slots, width, list(metric.groups))
    unique = metric.kind == "UNIQUE"
    statements = []
    for unit, start, end in metric.periods:
        statements.append(
            (
                "INSERT INTO tally.metric_values SELECT r.uid, r.customer, r.grp, $5,"
                " to_timestamp($6), to_timestamp($7), $8::int8, $8::int8, now()"
                f" FROM ({rollup}) AS r",
                (*args, unit, start, end, members if unique else 3),
            )
        )
        if unique:
            statements.append(
                (
                    "INSERT INTO tally.unique_members"
                    " SELECT r.uid, r.customer, $5, to_timestamp($6), r.grp,"
                    " 'user' || m || '@' || r.customer || '.example.com'"
                    f" FROM ({rollup}) AS r, generate_series(0, $7 - 1) AS m",
                    (*args, unit, start, members),
                )
            )
    if unique:
        metric.members = dict.fromkeys(range(slots), members)
    return statements


def stored_members(shape: Shape) -> list[MemberRollup]:
    """Every stored member, as the flushes that stored them offered them."""
    rollups: list[MemberRollup] = []
    for metric in shape.metrics:
        for slot, count in metric.members.items():
            c, g = metric.key(slot)
            held = [member(n, c) for n in range(count)]
            for unit, start, end in metric.periods:
                rollups.append(((metric.uid, c, unit, start, g), end, held))
    return rollups


def flush_events(shape: Shape, rollups: int, members: int, rng: random.Random) -> list[bytes]:
    """The events of the next flush: about `rollups` rollups over all tables
    (see the module's docstring); moves the metrics' stored counts on."""
    per_table = max(2, rollups // shape.tables)
    values: list[bytes] = []
    n = shape.sequence
    for metric in shape.metrics:
        if metric.kind == "UNIQUE":
            for slot in rng.sample(range(metric.stored), min(per_table, metric.stored)):
                c = metric.key(slot)[0]
                held = metric.members[slot]
                old = rng.sample(range(held), min(held, members - 1))
                for m in [*old, held]:
                    values.append(metric.event(n, slot, member(m, c)))
                    n += 1
                metric.members[slot] = held + 1
        else:
            present = rng.sample(range(metric.stored), min(per_table // 2, metric.stored))
            new = range(metric.stored, metric.stored + per_table - len(present))
            metric.stored += len(new)
            for slot in [*present, *new]:
                values.append(metric.event(n, slot))
                n += 1
    shape.sequence = n
    return values


def flush_deltas(shape: Shape, rollups: int, members: int, rng: random.Random) -> Deltas:
    """The next flush's Deltas, aggregated by the core from `flush_events`;
    checks that every event fed its metric (none refused, unmatched or
    skipped), so the shape is the one described."""
    values = flush_events(shape, rollups, members, rng)
    deltas = aggregate(shape.core, values, NOW + 1, WIDE)
    if deltas.events != len(values) or deltas.unmatched or deltas.skipped:
        raise AssertionError(
            f"{len(values)} events gave {deltas.events} applied, {deltas.unmatched} unmatched,"
            f" skipped {deltas.skipped}"
        )
    return deltas
