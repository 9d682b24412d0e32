"""Accumulating decoded events into rollup deltas.

A rollup is identified by `RollupKey` = (metric uid, customer id, group key,
time unit, period start). Each holds a small accumulator, in the style of
initialize/add/result units: `CountDelta`, `SumDelta` and `UniqueDelta`.
`Deltas` is one partition's pending work: it merges associatively, so a
flush can combine partitions, and a test can check
aggregate(A + B) == merge(aggregate(A), aggregate(B)).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from tally.core.events import UsageEvent
from tally.core.metrics import COUNT, SUM, MetricIndex
from tally.core.values import EXACT, SkipReason, sum_operand

RollupKey = tuple[str, str, str, str, int]
"""(metric uid, customer id, group key, time unit, period start in POSIX seconds)"""


class CountDelta:
    __slots__ = ("end", "events")

    def __init__(self, end: int) -> None:
        self.end = end
        self.events = 0

    def merge(self, other: CountDelta) -> None:
        self.events += other.events

    def value(self) -> Decimal:
        return Decimal(self.events)

    def __eq__(self, other: object) -> bool:
        return type(other) is CountDelta and (self.end, self.events) == (other.end, other.events)

    def __repr__(self) -> str:
        return f"CountDelta(end={self.end}, events={self.events})"


class SumDelta:
    __slots__ = ("decimals", "end", "events", "ints")

    def __init__(self, end: int) -> None:
        self.end = end
        self.events = 0
        # Integers add as Python ints (cheap, exact); the rest as decimals.
        self.ints = 0
        self.decimals = Decimal(0)

    def add(self, amount: int | Decimal) -> None:
        self.events += 1
        if type(amount) is int:
            self.ints += amount
        else:
            self.decimals = EXACT.add(self.decimals, amount)

    def merge(self, other: SumDelta) -> None:
        self.events += other.events
        self.ints += other.ints
        self.decimals = EXACT.add(self.decimals, other.decimals)

    def value(self) -> Decimal:
        return EXACT.add(Decimal(self.ints), self.decimals)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is SumDelta
            and self.end == other.end
            and self.events == other.events
            and self.value() == other.value()
        )

    def __repr__(self) -> str:
        return f"SumDelta(end={self.end}, events={self.events}, value={self.value()})"


class UniqueDelta:
    __slots__ = ("end", "events", "members")

    def __init__(self, end: int) -> None:
        self.end = end
        self.events = 0
        self.members: set[str] = set()

    def merge(self, other: UniqueDelta) -> None:
        self.events += other.events
        self.members |= other.members

    def value(self) -> Decimal:
        """Distinct members in this delta alone; the store adds only new ones."""
        return Decimal(len(self.members))

    def __eq__(self, other: object) -> bool:
        return type(other) is UniqueDelta and (self.end, self.events, self.members) == (
            other.end,
            other.events,
            other.members,
        )

    def __repr__(self) -> str:
        return f"UniqueDelta(end={self.end}, events={self.events}, members={len(self.members)})"


Delta = CountDelta | SumDelta | UniqueDelta


class Deltas:
    """Pending rollup changes plus the counters that explain them.

    `applied[uid]` counts events applied to a metric (once per event, however
    many time units), `skipped[(uid, reason)]` events that matched a metric but
    carried no usable value, `unmatched` events no live metric took.
    """

    __slots__ = ("applied", "events", "rollups", "skipped", "unmatched")

    def __init__(self) -> None:
        self.rollups: dict[RollupKey, Delta] = {}
        self.applied: dict[str, int] = {}
        self.skipped: dict[tuple[str, str], int] = {}
        self.unmatched = 0
        self.events = 0

    def __len__(self) -> int:
        return len(self.rollups)

    def add(self, event: UsageEvent, index: MetricIndex) -> None:
        """Apply one (already deduplicated) event to every metric it matches."""
        self.events += 1
        metrics = index.by_event_type.get(event.event_type)
        if not metrics:
            self.unmatched += 1
            return
        rollups = self.rollups
        customer = event.customer_id
        ts = event.timestamp
        taken = False
        for metric in metrics:
            if metric.filters and not metric.matches(event):
                continue
            kind = metric.kind
            amount: int | Decimal | str = 0
            member: str | None = None
            if kind == SUM:
                raw = event.properties.get(metric.value_property)  # type: ignore[arg-type]
                if type(raw) is float and not event.exact:
                    raw = event.exact_properties().get(metric.value_property)  # type: ignore[arg-type]
                amount = sum_operand(raw)
                if type(amount) is str:
                    self._skip(metric.uid, amount)
                    continue
            elif kind != COUNT:
                member = metric.member(event, metric.value_property)  # type: ignore[arg-type]
                if member is None:
                    self._skip(metric.uid, SkipReason.MISSING_VALUE)
                    continue
            group = metric.group_key(event) if metric.group_property is not None else ""
            taken = True
            self.applied[metric.uid] = self.applied.get(metric.uid, 0) + 1
            for unit, periods in metric.periods:
                start, end = periods.bounds(ts)
                key = (metric.uid, customer, group, unit, start)
                delta = rollups.get(key)
                if kind == COUNT:
                    if delta is None:
                        delta = rollups[key] = CountDelta(end)
                    delta.events += 1
                elif kind == SUM:
                    if delta is None:
                        delta = rollups[key] = SumDelta(end)
                    delta.add(amount)  # type: ignore[union-attr, arg-type]
                else:
                    if delta is None:
                        delta = rollups[key] = UniqueDelta(end)
                    delta.events += 1
                    delta.members.add(member)  # type: ignore[union-attr, arg-type]
        if not taken:
            self.unmatched += 1

    def add_all(self, events: Iterable[UsageEvent], index: MetricIndex) -> None:
        for event in events:
            self.add(event, index)

    def _skip(self, uid: str, reason: str) -> None:
        key = (uid, reason)
        self.skipped[key] = self.skipped.get(key, 0) + 1

    def merge(self, other: Deltas) -> None:
        """Fold `other` into this one (other is left as it was)."""
        rollups = self.rollups
        for key, delta in other.rollups.items():
            mine = rollups.get(key)
            if mine is None:
                mine = rollups[key] = type(delta)(delta.end)
            mine.merge(delta)  # type: ignore[arg-type]
        for uid, count in other.applied.items():
            self.applied[uid] = self.applied.get(uid, 0) + count
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.unmatched += other.unmatched
        self.events += other.events


def aggregate(events: Iterable[UsageEvent], index: MetricIndex) -> Deltas:
    deltas = Deltas()
    deltas.add_all(events, index)
    return deltas


def merged(parts: Iterable[Deltas]) -> Deltas:
    total = Deltas()
    for part in parts:
        total.merge(part)
    return total
