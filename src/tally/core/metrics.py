"""Metric definitions compiled once into what the per-event path needs.

A definition (anything shaped like `MetricSpec`, e.g. the pydantic contract)
becomes a slotted `CompiledMetric`: typed filter sets with case folding done
ahead of time, the kind as a small int, and one shared `PeriodCache` per
(time unit, zone). `MetricIndex` finds the metrics of an event type in one
dict lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from tally.core.events import UsageEvent
from tally.core.periods import PeriodCache, TimeUnit, zone
from tally.core.values import TooLong, key_number_text, key_text

COUNT = 0
SUM = 1
UNIQUE = 2
_KINDS = {"COUNT": COUNT, "SUM": SUM, "UNIQUE": UNIQUE}

_MISSING: Any = object()


class MetricSpec(Protocol):
    """The fields of a usage metric definition the core reads (DESIGN 1.2)."""

    @property
    def uid(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def aggregation_type(self) -> str: ...
    @property
    def aggregation_property(self) -> str | None: ...
    @property
    def grouping_property(self) -> str | None: ...
    @property
    def property_filters(self) -> Mapping[str, Sequence[str | int | float | bool]]: ...
    @property
    def properties_to_negate(self) -> Sequence[str]: ...
    @property
    def case_sensitive(self) -> bool: ...
    @property
    def time_units(self) -> Sequence[str]: ...
    @property
    def timezone(self) -> str: ...
    @property
    def deleted_at(self) -> object: ...


class PropertyFilter:
    """One property's IN (or NOT IN) list, split by JSON type.

    Typed sets make `"1"` differ from `1` and `true` from `1`, while numbers
    meet by canonical text, so `1` equals `1.0`.
    """

    __slots__ = ("booleans", "fold", "name", "negate", "numbers", "texts")

    def __init__(self, name: str, values: Iterable[object], negate: bool, fold: bool) -> None:
        texts: set[str] = set()
        numbers: set[str] = set()
        booleans: set[bool] = set()
        for value in values:
            if isinstance(value, bool):
                booleans.add(value)
            elif isinstance(value, int | float | Decimal):
                # A number over MAX_KEY_BYTES of text matches nothing, either side.
                with contextlib.suppress(TooLong):
                    numbers.add(key_number_text(value))
            elif isinstance(value, str):
                texts.add(value.casefold() if fold else value)
            else:
                raise TypeError(f"filter value {value!r} of {name!r} is not a JSON scalar")
        self.name = name
        self.negate = negate
        self.fold = fold
        self.texts = frozenset(texts)
        self.numbers = frozenset(numbers)
        self.booleans = frozenset(booleans)

    def listed(self, event: UsageEvent) -> bool:
        """Whether the event's value equals one of the listed values."""
        value: Any = event.properties.get(self.name, _MISSING)
        kind = type(value)
        if kind is str:
            return (value.casefold() if self.fold else value) in self.texts
        if kind is bool:
            return value in self.booleans
        try:
            if kind is int or kind is Decimal:
                return key_number_text(value) in self.numbers
            if kind is float:
                return key_number_text(event.exact_properties()[self.name]) in self.numbers
        except TooLong:
            return False
        return False  # missing or null


class CompiledMetric:
    __slots__ = (
        "filters",
        "fold",
        "group_property",
        "kind",
        "periods",
        "tables",
        "uid",
        "value_property",
    )

    def __init__(
        self,
        uid: str,
        kind: int,
        value_property: str | None,
        group_property: str | None,
        fold: bool,
        filters: tuple[PropertyFilter, ...],
        periods: tuple[tuple[str, PeriodCache], ...],
    ) -> None:
        self.uid = uid
        self.kind = kind
        self.value_property = value_property
        self.group_property = group_property
        self.fold = fold
        self.filters = filters
        self.periods = periods
        # (table key, unit, periods) per time unit: the key names the metric's
        # table in Deltas; one str object, so its hash is computed once.
        self.tables = tuple((f"{uid}\x00{unit}", unit, cache) for unit, cache in periods)

    def matches(self, event: UsageEvent) -> bool:
        # A plain loop: all() over a generator costs more per event.
        for clause in self.filters:  # noqa: SIM110
            if clause.listed(event) is clause.negate:
                return False
        return True

    def group_key(self, event: UsageEvent) -> str:
        """Text form of the grouping value; `""` when ungrouped, missing or null."""
        name = self.group_property
        if name is None:
            return ""
        return self.member(event, name) or ""

    def member(self, event: UsageEvent, name: str) -> str | None:
        """Text form of a property for grouping and UNIQUE; None if missing/null.

        Raises TooLong when the text could not be stored in a primary key."""
        value: Any = event.properties.get(name)
        kind = type(value)
        if kind is str:
            return key_text(value.casefold() if self.fold else value)
        if kind is bool:
            return "true" if value else "false"
        if kind is int or kind is Decimal:
            return key_number_text(value)
        if kind is float:
            return key_number_text(event.exact_properties()[name])
        return None


class PeriodCaches:
    """One `PeriodCache` per (unit, zone), shared by every metric that uses it."""

    __slots__ = ("_caches",)

    def __init__(self) -> None:
        self._caches: dict[tuple[str, str], PeriodCache] = {}

    def get(self, unit: str, zone_name: str) -> PeriodCache:
        key = (unit, zone_name)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = PeriodCache(TimeUnit(unit), zone(zone_name))
        return cache


def compile_metric(spec: MetricSpec, caches: PeriodCaches | None = None) -> CompiledMetric:
    caches = caches or PeriodCaches()
    fold = not spec.case_sensitive
    negated = set(spec.properties_to_negate)
    filters = tuple(
        PropertyFilter(name, values, name in negated, fold)
        for name, values in sorted(spec.property_filters.items())
    )
    units = sorted({TimeUnit(u) for u in spec.time_units}, key=list(TimeUnit).index)
    return CompiledMetric(
        uid=spec.uid,
        kind=_KINDS[str(spec.aggregation_type)],
        value_property=spec.aggregation_property,
        group_property=spec.grouping_property,
        fold=fold,
        filters=filters,
        periods=tuple((unit.value, caches.get(unit, spec.timezone)) for unit in units),
    )


class MetricIndex:
    """The live metrics, by event type. Deleted definitions are left out."""

    __slots__ = ("by_event_type", "by_uid")

    def __init__(self, specs: Iterable[MetricSpec], caches: PeriodCaches | None = None) -> None:
        caches = caches or PeriodCaches()
        by_type: dict[str, list[CompiledMetric]] = {}
        self.by_uid: dict[str, CompiledMetric] = {}
        for spec in specs:
            if spec.deleted_at is not None:
                continue
            compiled = compile_metric(spec, caches)
            by_type.setdefault(spec.event_type, []).append(compiled)
            self.by_uid[spec.uid] = compiled
        self.by_event_type: dict[str, tuple[CompiledMetric, ...]] = {
            event_type: tuple(metrics) for event_type, metrics in by_type.items()
        }

    def __len__(self) -> int:
        return len(self.by_uid)
