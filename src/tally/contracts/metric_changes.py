"""Whether a definition changes another (tally.contracts.metric): by meaning,
so that reordering a set or respelling a path is not a change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tally.contracts.metric_fields import (
    IMMUTABLE_FIELDS,
    MUTABLE_FIELDS,
    ContextType,
    StorageUnit,
    field_alias,
)
from tally.core.numbers import number_text
from tally.core.paths import PathError, parse_path

if TYPE_CHECKING:
    from tally.contracts.metric import UsageMetricDefinition


def _typed(value: object) -> tuple[str, str]:
    # bool before int: True must not compare equal to 1.
    if isinstance(value, bool):
        return ("b", str(value))
    if isinstance(value, int | float):
        return ("n", number_text(value))
    return ("s", str(value))


def _canonical(text: str) -> tuple[str | int, ...] | str:
    try:
        return parse_path(text)
    except PathError:
        return text  # refused at validation; never stored


def _comparable(definition: UsageMetricDefinition, field: str) -> object:
    """A field's meaning, so that reordering a set or respelling a path
    (`$.a`, `$['a']`, `a`) is not a change; grouping keys keep their order."""
    value = getattr(definition, field)
    if field == "property_filters":
        return {_canonical(key): frozenset(map(_typed, values)) for key, values in value.items()}
    if field == "presence_filters":
        return {_canonical(key): present for key, present in value.items()}
    if field == "properties_to_negate":
        return frozenset(map(_canonical, value))
    if field == "time_units":
        return frozenset(value)
    # Absent means the default (Exante's): restating it is not a change.
    if field == "context_type" and value is None:
        return ContextType.ORGANIZATION
    if field == "storage_unit" and value is None:
        return StorageUnit.RAW
    if field in ("aggregation_property", "grouping_property") and value is not None:
        return _canonical(value)
    if field == "grouping_properties" and value is not None:
        return tuple(map(_canonical, value))
    return value


def changed_fields(old: UsageMetricDefinition, new: UsageMetricDefinition) -> list[str]:
    """The wire names of the fields whose meaning differs, immutable ones first."""
    fields = IMMUTABLE_FIELDS + MUTABLE_FIELDS
    return [field_alias(f) for f in fields if _comparable(old, f) != _comparable(new, f)]


def keep_stored_spelling(
    old: UsageMetricDefinition, new: UsageMetricDefinition
) -> UsageMetricDefinition:
    """`new` with `old`'s immutable fields, for an update that changed none.

    They mean the same (`immutable_changes` is empty), but a respelled path
    stored would rename the API's `group` keys of every existing row."""
    return new.model_copy(update={f: getattr(old, f) for f in IMMUTABLE_FIELDS})


def immutable_changes(old: UsageMetricDefinition, new: UsageMetricDefinition) -> list[str]:
    return [field_alias(f) for f in IMMUTABLE_FIELDS if _comparable(old, f) != _comparable(new, f)]
