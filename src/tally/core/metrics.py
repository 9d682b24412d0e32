"""Metric definitions as the native core takes them.

A definition (anything shaped like `MetricSpec`, e.g. the pydantic contract)
becomes a plain spec tuple (`native_spec`); `MetricIndex` holds the live ones,
and `tally._native.Core.set_metrics` compiles them: typed filter sets with
case folding done once, the properties read, one period cache per (unit, zone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from tally.core.paths import Segment, parse_path
from tally.core.periods import TimeUnit

Path = tuple[Segment, ...]
SpecTuple = tuple[
    str,
    str,
    str,
    Path | None,
    list[Path],
    bool,
    list[tuple[Path, bool, list[Any]]],
    list[str],
    str,
    str,
    list[tuple[Path, bool]],
]
"""(uid, eventType, aggregationType, aggregationProperty, [grouping
properties], caseSensitive, [(filtered property, negated, values)], [time
units], zone, valueType, [(property, must be present)]); each property as its
path's segments (`tally.core.paths`)."""


class MetricSpec(Protocol):
    """The fields of a usage metric definition the core reads."""

    @property
    def uid(self) -> str: ...
    @property
    def event_type(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def aggregation_type(self) -> str: ...
    @property
    def aggregation_property(self) -> str | None: ...
    @property
    def grouping_property(self) -> str | None: ...
    @property
    def grouping_properties(self) -> Sequence[str] | None: ...
    @property
    def value_type(self) -> str: ...
    @property
    def presence_filters(self) -> Mapping[str, bool]: ...
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


def is_external(spec: MetricSpec) -> bool:
    """Values computed elsewhere (source EXTERNAL): no worker or core runs it."""
    return str(spec.source) == "EXTERNAL"


def native_spec(spec: MetricSpec) -> SpecTuple:
    if spec.event_type is None or is_external(spec):
        raise ValueError(f"metric {spec.uid!r} has no eventType: its values are external")
    negated = set(spec.properties_to_negate)
    units = sorted({TimeUnit(u) for u in spec.time_units}, key=list(TimeUnit).index)
    if spec.grouping_properties is not None:
        groups = list(spec.grouping_properties)
    else:
        groups = [spec.grouping_property] if spec.grouping_property is not None else []
    value = spec.aggregation_property
    return (
        spec.uid,
        spec.event_type,
        str(spec.aggregation_type),
        parse_path(value) if value is not None else None,
        [parse_path(g) for g in groups],
        spec.case_sensitive,
        [
            (parse_path(name), name in negated, list(values))
            for name, values in sorted(spec.property_filters.items())
        ],
        [unit.value for unit in units],
        spec.timezone,
        str(spec.value_type),
        [(parse_path(name), present) for name, present in sorted(spec.presence_filters.items())],
    )


class MetricIndex:
    """The live metrics; deleted and EXTERNAL definitions are left out."""

    __slots__ = ("by_uid", "specs")

    def __init__(self, specs: Iterable[MetricSpec]) -> None:
        self.by_uid: dict[str, MetricSpec] = {}
        self.specs: list[SpecTuple] = []
        for spec in specs:
            if spec.deleted_at is not None or is_external(spec):
                continue
            self.by_uid[spec.uid] = spec
            self.specs.append(native_spec(spec))

    def __len__(self) -> int:
        return len(self.specs)
