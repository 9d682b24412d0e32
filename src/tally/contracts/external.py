"""External values (Exante's metric values): one value computed elsewhere, for
one entity, metric, time unit and date, of a metric whose source is EXTERNAL.

`parse_external_value` checks the body's shape; `check_against` checks it
against the metric's definition. Both name every bad field at once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from tally.contracts.metric import (
    UID_PATTERN,
    AggregationType,
    ContextType,
    FieldError,
    FiniteDecimal,
    MetricSource,
    StorageUnit,
    UsageMetricDefinition,
    ValueType,
)
from tally.contracts.metric_errors import _field_errors
from tally.contracts.metric_fields import _zone_names
from tally.contracts.metric_fields import metadata_problem as _metadata_problem
from tally.core.periods import TimeUnit, period_bounds, zone

# The dates a value may have: every period of them, in any zone, starts after
# the Unix epoch's first day and ends within year 9999 (a later end does not
# exist; an earlier start is no time Tally's values are kept in).
FIRST_DATE = date(1970, 1, 2)
LAST_DATE = date(9998, 12, 31)


class ExternalTimeUnit(enum.StrEnum):
    DAY = "day"
    MONTH = "month"
    YEAR = "year"


class ExternalValueBody(BaseModel):
    """Exante's body (snake_case on the wire, as Exante writes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_alias=True)

    metric_uid: Annotated[StrictStr, Field(pattern=UID_PATTERN)]
    time_unit: ExternalTimeUnit
    metric_date: date
    value: FiniteDecimal | Annotated[StrictStr, Field(max_length=4096)]
    timezone: StrictStr | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, alias="_metadata")

    @field_validator("metric_date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        # Lax pydantic would take a number of seconds; Exante says string<date>.
        if not isinstance(value, str) or len(value) != 10:
            raise PydanticCustomError("date", "must be a date, YYYY-MM-DD")
        return value

    @field_validator("metric_date")
    @classmethod
    def _date_in_range(cls, value: date) -> date:
        if not FIRST_DATE <= value <= LAST_DATE:
            raise PydanticCustomError(
                "date_range",
                "must fall between {first} and {last}",
                {"first": FIRST_DATE.isoformat(), "last": LAST_DATE.isoformat()},
            )
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _storable_metadata(cls, value: object) -> object:
        if (problem := _metadata_problem(value)) is not None:
            raise PydanticCustomError("metadata", problem)
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _number_or_text(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            raise PydanticCustomError("value", "must be a number (or a string for STRING metrics)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and value not in _zone_names():
            raise PydanticCustomError(
                "unknown_timezone", "'{value}' is not an IANA time zone name", {"value": value}
            )
        return value


class ExternalValueError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(map(str, errors)))


def parse_external_value(data: object) -> ExternalValueBody:
    if not isinstance(data, Mapping):
        raise ExternalValueError([FieldError("", "must be an object")])
    try:
        return ExternalValueBody.model_validate(data)
    except ValidationError as exc:
        raise ExternalValueError(_one_per_field(_field_errors(exc), data)) from None


def _one_per_field(errors: list[FieldError], data: Mapping[str, Any]) -> list[FieldError]:
    """`value` is a number or a string: a number refused by both is one error on
    `value`, the number's reason (not one per branch of the union)."""
    branches = [e for e in errors if e.field.startswith("value.")]
    if not branches:
        return errors
    wanted = "value.constrained-str" if isinstance(data.get("value"), str) else "value.decimal"
    chosen = next((e for e in branches if e.field == wanted), branches[0])
    kept = [e for e in errors if not e.field.startswith("value.")]
    return [*kept, FieldError("value", chosen.reason, chosen.type)]


def context_of(definition: UsageMetricDefinition) -> ContextType:
    """The entity kind of the metric's customer key (Exante's default: ORGANIZATION)."""
    return definition.context_type or ContextType.ORGANIZATION


@dataclass(frozen=True, slots=True)
class ExternalValue:
    """A checked value and the rollup row it is: its period in the metric's zone."""

    body: ExternalValueBody
    period_start: datetime
    period_end: datetime
    number: Decimal | None
    text: str | None
    latest: bool  # LATEST combines by latest_at (migration 0007); no other kind has one


def definition_problems(
    definition: UsageMetricDefinition,
    context_type: str,
    time_unit: str | None,
    value: Decimal | int | float | str | None,
    metric_date: date | None = None,
) -> list[FieldError]:
    """What the definition refuses of a value (`path.` or body fields). A field
    that did not parse is given as None and not judged again, so a body with a
    bad shape is still told every rule it breaks (`check_against`, and the API
    when the shape is refused)."""
    errors: list[FieldError] = []
    if definition.source is not MetricSource.EXTERNAL:
        errors.append(
            FieldError(
                "metric_uid",
                f"metric {definition.uid!r} has source {definition.source.value}: "
                "its values come from events, not from this endpoint",
                "not_external",
            )
        )
    expected = context_of(definition)
    if context_type in ContextType.__members__ and context_type != expected.value:
        errors.append(
            FieldError(
                "path.context_type",
                f"metric {definition.uid!r} has context_type {expected.value}, not {context_type}",
                "context_mismatch",
            )
        )
    if time_unit is not None and TimeUnit(time_unit) not in definition.time_units:
        units = ", ".join(u.value for u in definition.time_units)
        errors.append(
            FieldError(
                "time_unit",
                f"metric {definition.uid!r} holds {units}, not {time_unit}",
                "time_unit",
            )
        )
    elif time_unit is not None and metric_date is not None:
        # A value is keyed by (entity, metric, time_unit, metric_date), and stored as
        # its period's row: the date of a month or year value is its period's first.
        first = {
            TimeUnit.MONTH.value: metric_date.replace(day=1),
            TimeUnit.YEAR.value: metric_date.replace(month=1, day=1),
        }.get(time_unit, metric_date)
        if first != metric_date:
            errors.append(
                FieldError(
                    "metric_date",
                    f"a {time_unit} value is dated the first day of its {time_unit}:"
                    f" {first.isoformat()}, not {metric_date.isoformat()}",
                    "period_start",
                )
            )
    if value is None:
        return errors
    if definition.value_type is ValueType.STRING:
        if not isinstance(value, str):
            errors.append(FieldError("value", "must be a string (the metric is STRING)", "value"))
    elif isinstance(value, str):
        errors.append(FieldError("value", "must be a number (the metric is NUMBER)", "value"))
    else:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
        if definition.storage_unit is StorageUnit.CENTS and number != number.to_integral_value():
            errors.append(
                FieldError("value", "must be a whole number of cents (storage_unit cents)", "cents")
            )
    return errors


def check_against(
    definition: UsageMetricDefinition, context_type: str, body: ExternalValueBody
) -> ExternalValue:
    """The value as stored, or ExternalValueError naming every field (`path.` or body)."""
    errors = definition_problems(
        definition, context_type, body.time_unit.value, body.value, body.metric_date
    )
    number = None if isinstance(body.value, str) else body.value
    text = body.value if isinstance(body.value, str) else None
    if errors:
        raise ExternalValueError(errors)
    tz = zone(definition.timezone)
    # Noon of the date, in the metric's zone, is inside that local day.
    noon = datetime.combine(body.metric_date, time(12), tzinfo=tz)
    start, end = period_bounds(noon.timestamp(), TimeUnit(body.time_unit.value), tz)
    return ExternalValue(
        body,
        datetime.fromtimestamp(start, tz),
        datetime.fromtimestamp(end, tz),
        number,
        text,
        definition.aggregation_type is AggregationType.LATEST,
    )
