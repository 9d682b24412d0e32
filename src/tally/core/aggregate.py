"""Accumulating decoded events into rollup deltas.

A rollup is identified by `RollupKey` = (metric uid, customer id, group key,
time unit, period start). Deltas keep one `Table` per (metric, time unit),
whose rows map (customer, group, period start) to a small accumulator:

- COUNT: the number of events (an int);
- SUM: `[events, integer part, decimal part]` (ints add fast and exactly;
  the rest are exact decimals);
- UNIQUE: `[events, set of members]`.

Splitting the key this way keeps the per-event work to short tuples and a
few dict lookups. `Deltas` merge associatively, so a test can check
aggregate(A + B) == merge(aggregate(A), aggregate(B)).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from tally.core.events import UsageEvent
from tally.core.metrics import COUNT, SUM, UNIQUE, CompiledMetric, MetricIndex
from tally.core.periods import SLOT_SECONDS
from tally.core.values import EXACT, SkipReason, TooLong, sum_operand

RollupKey = tuple[str, str, str, str, int]
"""(metric uid, customer id, group key, time unit, period start in POSIX seconds)"""

RowKey = tuple[str, str, int]
"""(customer id, group key, period start) inside one Table"""

_ZERO = Decimal(0)


class Table:
    """The pending rollups of one metric in one time unit."""

    __slots__ = ("ends", "kind", "rows", "uid", "unit")

    def __init__(self, uid: str, unit: str, kind: int) -> None:
        self.uid = uid
        self.unit = unit
        self.kind = kind
        self.rows: dict[RowKey, Any] = {}
        self.ends: dict[int, int] = {}  # period start -> end, for the rows' periods

    def events(self, acc: Any) -> int:
        return acc if self.kind == COUNT else int(acc[0])

    def value(self, acc: Any) -> Decimal:
        """The delta's value alone (for UNIQUE, its distinct members)."""
        if self.kind == COUNT:
            return Decimal(acc)
        if self.kind == SUM:
            return EXACT.add(Decimal(acc[1]), acc[2])
        return Decimal(len(acc[1]))

    def merge(self, other: Table) -> tuple[int, int]:
        """Fold `other`'s rows in; returns how many rows and UNIQUE members are new here."""
        rows = self.rows
        before = len(rows)
        members = 0
        kind = self.kind
        for key, acc in other.rows.items():
            mine = rows.get(key)
            if kind == COUNT:
                rows[key] = acc if mine is None else mine + acc
            elif kind == SUM:
                if mine is None:
                    rows[key] = [acc[0], acc[1], acc[2]]
                else:
                    mine[0] += acc[0]
                    mine[1] += acc[1]
                    mine[2] = EXACT.add(mine[2], acc[2])
            elif mine is None:
                rows[key] = [acc[0], set(acc[1])]
                members += len(acc[1])
            else:
                mine[0] += acc[0]
                held = len(mine[1])
                mine[1] |= acc[1]
                members += len(mine[1]) - held
        self.ends.update(other.ends)
        return len(rows) - before, members


class Deltas:
    """Pending rollup changes plus the counters that explain them.

    `applied` counts events applied to each metric (once per event, however
    many time units), `skipped[(uid, reason)]` events that matched a metric but
    carried no usable value, `unmatched` events no live metric took.
    """

    __slots__ = ("events", "members", "size", "skipped", "tables", "unmatched")

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}
        self.size = 0  # rollups (rows over all tables)
        self.members = 0  # UNIQUE members held (they cost memory and rows too)
        self.skipped: dict[tuple[str, str], int] = {}
        self.unmatched = 0
        self.events = 0

    def __len__(self) -> int:
        return self.size

    def add(self, event: UsageEvent, index: MetricIndex) -> None:
        """Apply one (already deduplicated) event to every metric it matches.

        All or nothing: every operand (amount, member, group, periods) of
        every metric is computed first, and only then is anything changed, so
        an exception leaves these deltas exactly as they were."""
        metrics = index.by_event_type.get(event.event_type)
        if not metrics:
            self.events += 1
            self.unmatched += 1
            return
        ts = event.timestamp
        slot = int(ts // SLOT_SECONDS)  # PeriodCache's key, computed once per event
        plan: list[tuple[CompiledMetric, Any, str | None, str, list[tuple[int, int]]]] = []
        skips: list[tuple[str, str]] = []
        for metric in metrics:
            if metric.filters and not metric.matches(event):
                continue
            kind = metric.kind
            amount: Any = 0
            member: str | None = None
            if kind == SUM:
                raw = event.properties.get(metric.value_property)  # type: ignore[arg-type]
                if type(raw) is float and not event.exact:
                    raw = event.exact_properties().get(metric.value_property)  # type: ignore[arg-type]
                amount = sum_operand(raw)
                if type(amount) is str:
                    skips.append((metric.uid, amount))
                    continue
            try:
                if kind == UNIQUE:
                    member = metric.member(event, metric.value_property)  # type: ignore[arg-type]
                    if member is None:
                        skips.append((metric.uid, SkipReason.MISSING_VALUE))
                        continue
                group = metric.group_key(event) if metric.group_property is not None else ""
            except TooLong:
                skips.append((metric.uid, SkipReason.VALUE_TOO_LONG))
                continue
            bounds = [
                periods.cached.get(slot) or periods.bounds(ts) for _, _, periods in metric.tables
            ]
            plan.append((metric, amount, member, group, bounds))

        # Nothing below can raise: operands are bounded (values.py), so exact
        # additions never round.
        self.events += 1
        for skip in skips:
            self.skipped[skip] = self.skipped.get(skip, 0) + 1
        if not plan:
            self.unmatched += 1
            return
        tables = self.tables
        customer = event.customer_id
        for metric, amount, member, group, bounds in plan:
            kind = metric.kind
            for (table_key, unit, _), (start, end) in zip(metric.tables, bounds, strict=True):
                table = tables.get(table_key)
                if table is None:
                    table = tables[table_key] = Table(metric.uid, unit, kind)
                rows = table.rows
                key = (customer, group, start)
                acc = rows.get(key)
                if acc is None:
                    self.size += 1
                    if start not in table.ends:
                        table.ends[start] = end
                    if kind == COUNT:
                        rows[key] = 1
                    elif kind == SUM:
                        if type(amount) is int:
                            rows[key] = [1, amount, _ZERO]
                        else:
                            rows[key] = [1, 0, amount]
                    else:
                        rows[key] = [1, {member}]
                        self.members += 1
                elif kind == COUNT:
                    rows[key] = acc + 1
                elif kind == SUM:
                    acc[0] += 1
                    if type(amount) is int:
                        acc[1] += amount
                    else:
                        acc[2] = EXACT.add(acc[2], amount)
                else:
                    acc[0] += 1
                    distinct = acc[1]
                    held = len(distinct)
                    distinct.add(member)
                    if len(distinct) != held:
                        self.members += 1

    def add_all(self, events: Iterable[UsageEvent], index: MetricIndex) -> None:
        for event in events:
            self.add(event, index)

    def merge(self, other: Deltas) -> None:
        """Fold `other` into this one (other is left as it was)."""
        for key, table in other.tables.items():
            mine = self.tables.get(key)
            if mine is None:
                mine = self.tables[key] = Table(table.uid, table.unit, table.kind)
            rows, members = mine.merge(table)
            self.size += rows
            self.members += members
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.unmatched += other.unmatched
        self.events += other.events

    @property
    def applied(self) -> dict[str, int]:
        """Events applied per metric: each added one event to one row of every
        table of its metric, so any one table of the metric tells."""
        counts: dict[str, int] = {}
        for table in self.tables.values():
            if table.uid not in counts:
                counts[table.uid] = sum(map(table.events, table.rows.values()))
        return counts

    def rollups(self) -> Iterator[tuple[RollupKey, Table, Any]]:
        """Every pending rollup: its key, its table, and its accumulator."""
        for table in self.tables.values():
            uid, unit = table.uid, table.unit
            for (customer, group, start), acc in table.rows.items():
                yield (uid, customer, group, unit, start), table, acc

    def snapshot(self) -> dict[RollupKey, tuple[int, int, object]]:
        """(period end, events, value) per rollup, UNIQUE values as member sets."""
        return {
            key: (
                table.ends[key[4]],
                table.events(acc),
                frozenset(acc[1]) if table.kind == UNIQUE else table.value(acc),
            )
            for key, table, acc in self.rollups()
        }


def aggregate(events: Iterable[UsageEvent], index: MetricIndex) -> Deltas:
    deltas = Deltas()
    deltas.add_all(events, index)
    return deltas


def merged(parts: Iterable[Deltas]) -> Deltas:
    total = Deltas()
    for part in parts:
        total.merge(part)
    return total
