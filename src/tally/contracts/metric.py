"""The usage metric definition (docs/design.md §2.2), as operators and the API write it.

Field names follow Sequence's UsageMetric API (camelCase on the wire); `uid`
and the immutability rules follow Exante's metric definitions. Every refusal
names the field and the reason (`MetricDefinitionError`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import unicodedata
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from tally.core.events import parse_timestamp
from tally.core.numbers import contains_nul, decimal_text, number_text
from tally.core.paths import PathError, parse_path
from tally.core.periods import TimeUnit

UID_PATTERN = r"^[a-z][a-z0-9_]{0,127}$"
_EARLIEST = -62135596800.0  # 0001-01-01T00:00:00Z
_LATEST = 253402300799.0  # 9999-12-31T23:59:59Z
MAX_FILTER_VALUES = 1000
MAX_GROUPING_PROPERTIES = 5
# Validation context key: a zone name accepted without this host's zone data
# (the one already stored for the metric).
STORED_ZONE = "stored_timezone"


class AggregationType(enum.StrEnum):
    COUNT = "COUNT"
    UNIQUE = "UNIQUE"
    SUM = "SUM"
    MAX = "MAX"
    MIN = "MIN"
    LATEST = "LATEST"
    AVG = "AVG"


class ValueType(enum.StrEnum):
    """What a rollup's value is (Cuoral's data_type): STRING only with LATEST."""

    NUMBER = "NUMBER"
    STRING = "STRING"


class MetricType(enum.StrEnum):
    SIMPLE = "SIMPLE"
    GROUPED = "GROUPED"


class TargetOperator(enum.StrEnum):
    GREATER_THAN = "greater_than"
    LESS_THAN = "less_than"
    EQUAL_TO = "equal_to"


class TargetDirection(enum.StrEnum):
    UP = "up"
    DOWN = "down"


class MetricSource(enum.StrEnum):
    """EVENTS: workers aggregate events; EXTERNAL: values are computed elsewhere
    and created through the API (Exante's metric values); workers never run it."""

    EVENTS = "EVENTS"
    EXTERNAL = "EXTERNAL"


class ContextType(enum.StrEnum):
    """Exante's context_type: the kind of entity the customer key names."""

    ORGANIZATION = "ORGANIZATION"
    PARTY = "PARTY"
    USER = "USER"


class ValueKind(enum.StrEnum):
    """Exante's value_type (Tally's `valueType` is Cuoral's NUMBER or STRING)."""

    CURRENCY = "currency"
    PERCENTAGE = "percentage"
    DAYS = "days"
    COUNT = "count"
    RATIO = "ratio"


class StorageUnit(enum.StrEnum):
    """raw: values as they are; cents: currency in integer minor units."""

    RAW = "raw"
    CENTS = "cents"


class PeriodDefinition(enum.StrEnum):
    """Exante's period_definition: how a value's metricDate is to be read."""

    AS_OF_DATE = "as_of_date"
    TRAILING_30_DAYS = "trailing_30_days"
    CALENDAR_MONTH = "calendar_month"
    MONTH_TO_DATE = "month_to_date"


class PeriodType(enum.StrEnum):
    ROLLING = "rolling"
    CALENDAR = "calendar"


class PeriodValue(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"
    DAYS_7 = "7-day"
    DAYS_30 = "30-day"
    DAYS_90 = "90-day"


# Aggregations an EXTERNAL metric may have: how its stored values combine
# across periods. COUNT, UNIQUE and AVG need events.
EXTERNAL_AGGREGATIONS = frozenset(
    {AggregationType.SUM, AggregationType.MAX, AggregationType.MIN, AggregationType.LATEST}
)
# The one time unit an EXTERNAL metric's values are posted in (Exante's
# time_unit). Exactly one: the usage query covers a window with the largest
# stored unit that fits, which is only right when every unit holds the same
# values (docs/decisions.md, "External values: one time unit").
EXTERNAL_UNITS = frozenset({TimeUnit.DAY, TimeUnit.MONTH, TimeUnit.YEAR})
# Values that overlap or are not additive: summing them across periods is
# wrong (a month-to-date value already holds the days before it).
OVERLAPPING_PERIODS = frozenset(
    {
        PeriodDefinition.TRAILING_30_DAYS,
        PeriodDefinition.MONTH_TO_DATE,
        PeriodDefinition.CALENDAR_MONTH,
    }
)
NON_ADDITIVE_KINDS = frozenset({ValueKind.PERCENTAGE, ValueKind.RATIO, ValueKind.DAYS})
# Exante's definition fields: only an EXTERNAL metric's values respect them.
EXTERNAL_ONLY_FIELDS = ("context_type", "value_kind", "storage_unit", "period_definition")


# A finite exact number (a JSON number or a string holding one; no NaN, no
# infinity), of at most 40 digits, 20 after the point (`1e999999` would be a
# million digits), written back as canonical decimal text.
FiniteDecimal = Annotated[
    Decimal,
    Field(allow_inf_nan=False, max_digits=40, decimal_places=20),
    PlainSerializer(decimal_text, return_type=str, when_used="json"),
]
Text256 = Annotated[StrictStr, Field(min_length=1, max_length=256)]
# A plain top-level name (at most 256 characters) or a path (`tally.core.paths`).
PropertyName = Annotated[StrictStr, Field(min_length=1, max_length=1024)]


# A filter value is a typed JSON scalar; null is refused (a missing or null
# property already fails IN and passes NOT IN, so null in a list means nothing).
def _filter_value(value: object) -> str | int | float | bool:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise PydanticCustomError(
            "int_range", "integers must fit in 64 bits; write larger numbers as decimals"
        )
    if isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise PydanticCustomError("finite_number", "must be a finite number")
    raise PydanticCustomError(
        "filter_value",
        "must be a string, number or boolean (null and objects are not filter values)",
    )


FilterValue = Annotated[
    str | int | float | bool,
    PlainValidator(_filter_value, json_schema_input_type=str | int | float | bool),
]


def _rule(field: str, reason: str) -> PydanticCustomError:
    return PydanticCustomError(
        "metric_rule", "{field}: {reason}", {"field": field, "reason": reason}
    )


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class UsageMetricDefinition(BaseModel):
    """What an operator writes: a file entry or an API body."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        # Only the wire names: a snake_case key in a file is an unknown field,
        # exactly as the JSON Schema says.
        validate_by_alias=True,
        validate_by_name=False,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )

    uid: Annotated[StrictStr, Field(pattern=UID_PATTERN)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    description: Annotated[StrictStr, Field(max_length=4096)] | None = None
    unit: Annotated[StrictStr, Field(max_length=64)] | None = None
    event_type: Text256 | None = None
    aggregation_type: AggregationType
    aggregation_property: PropertyName | None = None
    value_type: ValueType = ValueType.NUMBER
    metric_type: MetricType = MetricType.SIMPLE
    grouping_property: PropertyName | None = None
    grouping_properties: (
        Annotated[list[PropertyName], Field(min_length=1, max_length=MAX_GROUPING_PROPERTIES)]
        | None
    ) = None
    property_filters: dict[
        PropertyName,
        Annotated[list[FilterValue], Field(min_length=1, max_length=MAX_FILTER_VALUES)],
    ] = Field(default_factory=dict)
    properties_to_negate: list[PropertyName] = Field(default_factory=list)
    presence_filters: dict[PropertyName, StrictBool] = Field(default_factory=dict)
    case_sensitive: StrictBool = True
    time_units: Annotated[list[TimeUnit], Field(min_length=1)] = Field(
        default_factory=lambda: [TimeUnit.DAY, TimeUnit.MONTH]
    )
    timezone: StrictStr = "UTC"
    # Squad's targets: mutable; the usage summary reports whether the current value meets them.
    target_operator: TargetOperator | None = None
    target_value: FiniteDecimal | None = None
    target_direction: TargetDirection | None = None
    # Values computed elsewhere (Exante); see docs/decisions.md, "External values".
    source: MetricSource = MetricSource.EVENTS
    context_type: ContextType | None = None
    value_kind: ValueKind | None = None
    storage_unit: StorageUnit | None = None
    is_snapshot: StrictBool = False
    period_definition: PeriodDefinition | None = None
    formula: Annotated[StrictStr, Field(max_length=4096)] | None = None
    # Squad's default comparison period (mutable; the summary takes its own).
    period_type: PeriodType | None = None
    period_value: PeriodValue | None = None
    deleted_at: AwareDatetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        # PostgreSQL text and jsonb cannot hold NUL: refuse it here, naming the field.
        if isinstance(data, Mapping):
            for key, value in data.items():
                if contains_nul(key) or contains_nul(value):
                    raise _rule(
                        str(key).replace("\x00", "\\u0000"),
                        "must not contain the NUL character (\\u0000)",
                    )
        return data

    @model_validator(mode="before")
    @classmethod
    def _external_default_unit(cls, data: object) -> object:
        # An EXTERNAL metric has one time unit; without timeUnits it is day.
        if (
            isinstance(data, Mapping)
            and data.get("source") == MetricSource.EXTERNAL.value
            and "timeUnits" not in data
        ):
            return {**data, "timeUnits": [TimeUnit.DAY.value]}
        return data

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must not be blank")
        return value

    @field_validator("time_units")
    @classmethod
    def _units_unique(cls, value: list[TimeUnit]) -> list[TimeUnit]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("duplicate", "each time unit may appear once")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str, info: ValidationInfo) -> str:
        # A stored definition was checked where it was written, perhaps with
        # newer zone data than this host's: it is read back as it is (the
        # worker then refuses to run it, see tally.worker.definitions).
        if value not in _zone_names() and value != (info.context or {}).get(STORED_ZONE):
            raise PydanticCustomError(
                "unknown_timezone", "'{value}' is not an IANA time zone name", {"value": value}
            )
        return value

    @field_validator("properties_to_negate")
    @classmethod
    def _negate_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("duplicate", "each property may appear once")
        return value

    @field_validator("deleted_at", mode="before")
    @classmethod
    def _deleted_at_is_a_date_time(cls, value: object) -> object:
        # Lax pydantic would take a number of seconds; the contract says date-time.
        if value is None:
            return value
        if isinstance(value, datetime):
            seconds = value.timestamp() if value.tzinfo is not None else None
        elif isinstance(value, str):
            seconds = parse_timestamp(value)
        else:
            seconds = None
        if seconds is None:
            raise PydanticCustomError("date_time", "must be an RFC 3339 date-time with an offset")
        if not _EARLIEST <= seconds <= _LATEST:  # PostgreSQL's timestamptz is held in UTC
            raise PydanticCustomError("date_time", "must fall between the years 1 and 9999 in UTC")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> UsageMetricDefinition:
        problems = self._rule_problems()
        if not problems:
            try:
                self._check_paths()
            except PydanticCustomError as exc:
                context = exc.context or {}
                problems.append((str(context["field"]), str(context["reason"])))
        if problems:
            (field, reason), more = problems[0], problems[1:]
            # All of them at once: `_field_errors` lists the rest from `more`.
            raise PydanticCustomError(
                "metric_rule",
                "{field}: {reason}",
                {"field": field, "reason": reason, "more": [list(p) for p in more]},
            )
        return self

    def _rule_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []

        def rule(field: str, reason: str) -> None:
            problems.append((field, reason))

        kind = self.aggregation_type
        external = self.source is MetricSource.EXTERNAL
        if external:
            if self.event_type is not None:
                rule("eventType", "not allowed when source is EXTERNAL (no events feed it)")
            if kind not in EXTERNAL_AGGREGATIONS:
                rule(
                    "aggregationType",
                    f"{kind.value} needs events; an EXTERNAL metric is SUM, MAX, MIN or LATEST",
                )
            if self.aggregation_property is not None:
                rule("aggregationProperty", "not allowed when source is EXTERNAL")
            if self.metric_type is not MetricType.SIMPLE:
                rule("metricType", "an EXTERNAL metric is SIMPLE")
            for name in ("property_filters", "presence_filters", "properties_to_negate"):
                if getattr(self, name):
                    rule(field_alias(name), "not allowed when source is EXTERNAL")
            if len(self.time_units) != 1 or self.time_units[0] not in EXTERNAL_UNITS:
                rule(
                    "timeUnits",
                    "an EXTERNAL metric has exactly one time unit, the one its values are"
                    " posted in: [day], [month] or [year]",
                )
            if kind is AggregationType.SUM:
                if self.period_definition in OVERLAPPING_PERIODS:
                    rule(
                        "periodDefinition",
                        f"{self.period_definition} values overlap: summing them across periods"
                        " is wrong; use LATEST (or MAX, MIN)",
                    )
                if self.value_kind in NON_ADDITIVE_KINDS:
                    rule(
                        "valueKind",
                        f"{self.value_kind} values do not add up across periods;"
                        " use LATEST (or MAX, MIN)",
                    )
        else:
            if self.event_type is None:
                rule("eventType", "required (unless source is EXTERNAL)")
            for name in EXTERNAL_ONLY_FIELDS:
                if getattr(self, name) is not None:
                    rule(field_alias(name), "only allowed when source is EXTERNAL")
            if self.is_snapshot:
                rule("isSnapshot", "only allowed when source is EXTERNAL")
        needs_property = not external and kind is not AggregationType.COUNT
        if needs_property and self.aggregation_property is None:
            rule("aggregationProperty", f"required for {kind.value}")
        if not external and not needs_property and self.aggregation_property is not None:
            rule("aggregationProperty", "not allowed for COUNT (it counts events)")
        if self.value_type is ValueType.STRING and kind is not AggregationType.LATEST:
            rule("valueType", f"STRING is only allowed with LATEST, not {kind.value}")
        if self.is_snapshot and kind is not AggregationType.LATEST:
            rule("isSnapshot", f"a snapshot is LATEST, never summed; not {kind.value}")
        if self.storage_unit is StorageUnit.CENTS and self.value_type is ValueType.STRING:
            rule("storageUnit", "cents holds numbers, not STRING values")
        rolling_only = (PeriodValue.DAYS_7, PeriodValue.DAYS_30, PeriodValue.DAYS_90)
        if self.period_type is PeriodType.CALENDAR and self.period_value in rolling_only:
            # The summary refuses it: a default period it cannot serve is no default.
            rule("periodValue", f"{self.period_value} is a rolling period only, not calendar")
        if (self.target_value is None) != (self.target_operator is None):
            rule("targetValue", "give targetValue and targetOperator together, or neither")
        grouped = self.metric_type is MetricType.GROUPED
        one, several = self.grouping_property, self.grouping_properties
        if one is not None and several is not None:
            rule("groupingProperties", "give groupingProperty or groupingProperties, not both")
        if grouped and one is None and several is None:
            rule("groupingProperty", "required when metricType is GROUPED")
        if not grouped and one is not None:
            rule("groupingProperty", "only allowed when metricType is GROUPED")
        if not grouped and several is not None:
            rule("groupingProperties", "only allowed when metricType is GROUPED")
        for key in self.properties_to_negate:
            if key not in self.property_filters:
                rule("propertiesToNegate", f"{key!r} is not a key of propertyFilters")
        return problems

    def _check_paths(self) -> None:
        """Every property is a supported path; none appears twice where that is meaningless."""

        def path(field: str, text: str) -> tuple[str | int, ...]:
            try:
                return parse_path(text)
            except PathError as exc:
                raise _rule(field, f"{text[:64]!r} is not a supported path: {exc}") from None

        if self.aggregation_property is not None:
            path("aggregationProperty", self.aggregation_property)
        if self.grouping_property is not None:
            path("groupingProperty", self.grouping_property)
        seen: dict[tuple[str | int, ...], str] = {}
        for n, text in enumerate(self.grouping_properties or ()):
            segments = path(f"groupingProperties[{n}]", text)
            if segments in seen:
                raise _rule(f"groupingProperties[{n}]", f"the same property as {seen[segments]!r}")
            seen[segments] = text
        filtered: dict[tuple[str | int, ...], str] = {}
        for text in self.property_filters:
            segments = path(f"propertyFilters.{text[:64]}", text)
            if segments in filtered:
                raise _rule(
                    f"propertyFilters.{text[:64]}", f"the same property as {filtered[segments]!r}"
                )
            filtered[segments] = text
        present: dict[tuple[str | int, ...], str] = {}
        for text in self.presence_filters:
            segments = path(f"presenceFilters.{text[:64]}", text)
            if segments in present:
                raise _rule(
                    f"presenceFilters.{text[:64]}", f"the same property as {present[segments]!r}"
                )
            if segments in filtered:
                raise _rule(
                    f"presenceFilters.{text[:64]}",
                    f"also in propertyFilters as {filtered[segments]!r}: a listed value is present",
                )
            present[segments] = text

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    def to_document(self) -> dict[str, Any]:
        """The wire form: camelCase, JSON types, nulls left out, and the
        defaults of `source` and `isSnapshot` too (a metric of events reads as
        it did before they existed)."""
        document = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.source is MetricSource.EVENTS:
            del document["source"]
        if not self.is_snapshot:
            del document["isSnapshot"]
        return document


class UsageMetric(UsageMetricDefinition):
    """A stored definition, as the API returns it."""

    id: StrictStr
    created_at: datetime
    updated_at: datetime


IMMUTABLE_FIELDS: tuple[str, ...] = (
    "uid",
    "event_type",
    "aggregation_type",
    "aggregation_property",
    "value_type",
    "metric_type",
    "grouping_property",
    "grouping_properties",
    "property_filters",
    "properties_to_negate",
    "presence_filters",
    "case_sensitive",
    "time_units",
    "timezone",
    "source",
    "context_type",
    "value_kind",
    "storage_unit",
    "is_snapshot",
    "period_definition",
)
MUTABLE_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "unit",
    "deleted_at",
    "target_operator",
    "target_value",
    "target_direction",
    "formula",
    "period_type",
    "period_value",
)


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


def field_alias(field: str) -> str:
    return to_camel(field)


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


class FieldError:
    __slots__ = ("field", "reason", "type")

    def __init__(self, field: str, reason: str, type: str = "value_error") -> None:
        self.field = field
        self.reason = reason
        self.type = type

    def __repr__(self) -> str:
        return f"FieldError({self.field!r}, {self.reason!r})"

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class MetricDefinitionError(ValueError):
    """A definition was refused; `errors` names each field and why."""

    def __init__(self, errors: Iterable[FieldError], uid: str | None = None) -> None:
        self.errors = list(errors)
        self.uid = uid
        where = f"metric {uid!r}" if uid else "metric definition"
        super().__init__(f"{where} refused: " + "; ".join(map(str, self.errors)))


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for error in exc.errors(include_url=False):
        ctx = error.get("ctx") or {}
        if error["type"] == "metric_rule":
            errors.append(FieldError(str(ctx["field"]), str(ctx["reason"]), "metric_rule"))
            for field, reason in ctx.get("more") or ():
                errors.append(FieldError(str(field), str(reason), "metric_rule"))
            continue
        parts = [str(part) for part in error["loc"]]
        message = error["msg"]
        if parts[-1:] == ["[key]"]:  # a bad key of a mapping: name the mapping
            message = f"key {parts[-2]!r}: {message}"
            parts = parts[:-2]
        loc = ".".join(parts) or "(definition)"
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required"
        errors.append(FieldError(loc, message, error["type"]))
    return errors


def parse_metric(data: object, stored_zone: str | None = None) -> UsageMetricDefinition:
    """Validate one definition from a file or request body.

    `stored_zone`: the zone already stored for this metric, accepted even when
    this host's zone data lacks it (a change of mutable fields keeps it)."""
    if not isinstance(data, Mapping):
        raise MetricDefinitionError([FieldError("(definition)", "must be an object")])
    try:
        return UsageMetricDefinition.model_validate(data, context={STORED_ZONE: stored_zone})
    except ValidationError as exc:
        uid = data.get("uid")
        raise MetricDefinitionError(
            _field_errors(exc), uid if isinstance(uid, str) else None
        ) from None


def uid_from_name(name: str) -> str:
    """A stable uid for a definition that has none (Sequence's and Cuoral's
    bodies): `name` with its accents taken off (NFKD, combining marks dropped),
    lowercased, every run of other characters one `_`, at most 128 characters,
    starting with a letter (`m_` is put first otherwise). A name with no letter
    or digit left (`日本語`, `!!!`) is `m_` and 12 hex digits of its SHA-256, so
    two such names do not share one uid."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    slug = "".join(c if "a" <= c <= "z" or "0" <= c <= "9" else " " for c in plain.lower())
    uid = "_".join(slug.split())
    if not uid:
        return "m_" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    if not "a" <= uid[0] <= "z":
        uid = "m_" + uid
    return uid[:128].rstrip("_")
