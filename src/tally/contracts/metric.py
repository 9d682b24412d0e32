"""The usage metric definition (docs/design.md §2.2), as operators and the API write it.

The field types, enums and field lists are in tally.contracts.metric_fields
(re-exported here: import them from either).

Field names follow Sequence's UsageMetric API (camelCase on the wire); `uid`
and the immutability rules follow Exante's metric definitions. Every refusal
names the field and the reason (`MetricDefinitionError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from tally.contracts.metric_changes import (
    changed_fields,
    immutable_changes,
    keep_stored_spelling,
)
from tally.contracts.metric_errors import (
    FieldError,
    MetricDefinitionError,
    _field_errors,
    rules_despite_shapes,
)
from tally.contracts.metric_fields import (
    _EARLIEST,
    _LATEST,
    EXTERNAL_AGGREGATIONS,
    EXTERNAL_ONLY_FIELDS,
    EXTERNAL_UNITS,
    IMMUTABLE_FIELDS,
    MAX_FILTER_VALUES,
    MAX_GROUPING_PROPERTIES,
    MUTABLE_FIELDS,
    NON_ADDITIVE_KINDS,
    OVERLAPPING_PERIODS,
    SKIPPED_FIELDS,
    STORED_ZONE,
    UID_PATTERN,
    AggregationType,
    ContextType,
    FilterValue,
    FiniteDecimal,
    MetricSource,
    MetricType,
    PeriodDefinition,
    PeriodType,
    PeriodValue,
    PropertyName,
    StorageUnit,
    TargetDirection,
    TargetOperator,
    Text256,
    ValueKind,
    ValueType,
    _rule,
    _zone_names,
    field_alias,
    metric_metadata_problem,
    uid_from_name,
)
from tally.core.events import parse_timestamp
from tally.core.numbers import contains_nul
from tally.core.paths import PathError, parse_path
from tally.core.periods import TimeUnit

# Re-exported: the field types live in tally.contracts.metric_fields.
__all__ = [
    "EXTERNAL_AGGREGATIONS",
    "EXTERNAL_ONLY_FIELDS",
    "EXTERNAL_UNITS",
    "IMMUTABLE_FIELDS",
    "MAX_FILTER_VALUES",
    "MAX_GROUPING_PROPERTIES",
    "MUTABLE_FIELDS",
    "NON_ADDITIVE_KINDS",
    "OVERLAPPING_PERIODS",
    "STORED_ZONE",
    "UID_PATTERN",
    "AggregationType",
    "ContextType",
    "FieldError",
    "FilterValue",
    "FiniteDecimal",
    "MetricDefinitionError",
    "MetricSource",
    "MetricType",
    "PeriodDefinition",
    "PeriodType",
    "PeriodValue",
    "PropertyName",
    "StorageUnit",
    "TargetDirection",
    "TargetOperator",
    "Text256",
    "UsageMetric",
    "UsageMetricDefinition",
    "ValueKind",
    "ValueType",
    "changed_fields",
    "field_alias",
    "immutable_changes",
    "keep_stored_spelling",
    "parse_metric",
    "uid_from_name",
]


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
    # Free JSON about the metric, kept and answered as sent; metering never reads
    # it (Squad's ownerId, type and relatedOutcomes are kept here).
    metadata: dict[str, Any] | None = None
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

    @field_validator("metadata", mode="before")
    @classmethod
    def _storable_metadata(cls, value: object) -> object:
        if (problem := metric_metadata_problem(value)) is not None:
            raise PydanticCustomError("metadata", problem)
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
    def _cross_field_rules(self, info: ValidationInfo) -> UsageMetricDefinition:
        skipped = frozenset((info.context or {}).get(SKIPPED_FIELDS, ()))
        problems = self._rule_problems(skipped)
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

    def _rule_problems(self, skipped: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """Every cross-field rule broken. `skipped`: fields refused for their own
        shape (`parse_metric`'s second pass): a rule reading one is not judged."""
        problems: list[tuple[str, str]] = []

        def rule(field: str, reason: str, *reads: str) -> None:
            if skipped.isdisjoint((field, *reads)):
                problems.append((field, reason))

        kind = self.aggregation_type
        external = self.source is MetricSource.EXTERNAL
        if external:
            if self.event_type is not None:
                rule(
                    "eventType", "not allowed when source is EXTERNAL (no events feed it)", "source"
                )
            if kind not in EXTERNAL_AGGREGATIONS:
                rule(
                    "aggregationType",
                    f"{kind.value} needs events; an EXTERNAL metric is SUM, MAX, MIN or LATEST",
                    "source",
                )
            if self.aggregation_property is not None:
                rule("aggregationProperty", "not allowed when source is EXTERNAL", "source")
            if self.metric_type is not MetricType.SIMPLE:
                rule("metricType", "an EXTERNAL metric is SIMPLE", "source")
            for name in ("property_filters", "presence_filters", "properties_to_negate"):
                if getattr(self, name):
                    rule(field_alias(name), "not allowed when source is EXTERNAL", "source")
            if len(self.time_units) != 1 or self.time_units[0] not in EXTERNAL_UNITS:
                rule(
                    "timeUnits",
                    "an EXTERNAL metric has exactly one time unit, the one its values are"
                    " posted in: [day], [month] or [year]",
                    "source",
                )
            if kind is AggregationType.SUM:
                if self.period_definition in OVERLAPPING_PERIODS:
                    rule(
                        "periodDefinition",
                        f"{self.period_definition} values overlap: summing them across periods"
                        " is wrong; use LATEST (or MAX, MIN)",
                        "source",
                        "aggregationType",
                    )
                if self.value_kind in NON_ADDITIVE_KINDS:
                    rule(
                        "valueKind",
                        f"{self.value_kind} values do not add up across periods;"
                        " use LATEST (or MAX, MIN)",
                        "source",
                        "aggregationType",
                    )
        else:
            if self.event_type is None:
                rule("eventType", "required (unless source is EXTERNAL)", "source")
            for name in EXTERNAL_ONLY_FIELDS:
                if getattr(self, name) is not None:
                    rule(field_alias(name), "only allowed when source is EXTERNAL", "source")
            if self.is_snapshot:
                rule("isSnapshot", "only allowed when source is EXTERNAL", "source")
        needs_property = not external and kind is not AggregationType.COUNT
        if needs_property and self.aggregation_property is None:
            rule("aggregationProperty", f"required for {kind.value}", "source", "aggregationType")
        if not external and not needs_property and self.aggregation_property is not None:
            rule(
                "aggregationProperty",
                "not allowed for COUNT (it counts events)",
                "source",
                "aggregationType",
            )
        if self.value_type is ValueType.STRING and kind is not AggregationType.LATEST:
            rule(
                "valueType",
                f"STRING is only allowed with LATEST, not {kind.value}",
                "aggregationType",
            )
        if self.is_snapshot and kind is not AggregationType.LATEST:
            rule(
                "isSnapshot",
                f"a snapshot is LATEST, never summed; not {kind.value}",
                "aggregationType",
            )
        if self.storage_unit is StorageUnit.CENTS and self.value_type is ValueType.STRING:
            rule("storageUnit", "cents holds numbers, not STRING values", "valueType")
        rolling_only = (PeriodValue.DAYS_7, PeriodValue.DAYS_30, PeriodValue.DAYS_90)
        if self.period_type is PeriodType.CALENDAR and self.period_value in rolling_only:
            # The summary refuses it: a default period it cannot serve is no default.
            rule(
                "periodValue",
                f"{self.period_value} is a rolling period only, not calendar",
                "periodType",
            )
        if (self.target_value is None) != (self.target_operator is None):
            rule(
                "targetValue",
                "give targetValue and targetOperator together, or neither",
                "targetOperator",
            )
        grouped = self.metric_type is MetricType.GROUPED
        one, several = self.grouping_property, self.grouping_properties
        if one is not None and several is not None:
            rule(
                "groupingProperties",
                "give groupingProperty or groupingProperties, not both",
                "groupingProperty",
            )
        if grouped and one is None and several is None:
            rule(
                "groupingProperty",
                "required when metricType is GROUPED",
                "metricType",
                "groupingProperties",
            )
        if not grouped and one is not None:
            rule("groupingProperty", "only allowed when metricType is GROUPED", "metricType")
        if not grouped and several is not None:
            rule("groupingProperties", "only allowed when metricType is GROUPED", "metricType")
        for key in self.properties_to_negate:
            if key not in self.property_filters:
                rule(
                    "propertiesToNegate",
                    f"{key!r} is not a key of propertyFilters",
                    "propertyFilters",
                )
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
        errors = _field_errors(exc)
        errors.extend(rules_despite_shapes(UsageMetricDefinition, data, exc, errors, stored_zone))
        raise MetricDefinitionError(errors, uid if isinstance(uid, str) else None) from None
