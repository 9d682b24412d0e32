"""The answers of `GET /usage-metrics/{uid}/usage` and `/summary`
(tally.api.routes_usage), in the API's camelCase shape."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tally.contracts.metric import AggregationType, TargetDirection, TargetOperator
from tally.contracts.value import PartialRange
from tally.core.windows import PERIOD_DEFINITIONS, PERIOD_VALUES

WindowSize = Literal["none", "hour", "day", "week", "month", "quarter", "year"]
PeriodValue = Literal["day", "week", "month", "quarter", "year", "7-day", "30-day", "90-day"]
PeriodDefinition = Literal["as_of_date", "trailing_30_days", "calendar_month", "month_to_date"]
assert set(PeriodValue.__args__) == set(PERIOD_VALUES)  # type: ignore[attr-defined]
assert set(PeriodDefinition.__args__) == set(PERIOD_DEFINITIONS)  # type: ignore[attr-defined]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class UsageWindow(_Wire):
    customer_id: str
    group: dict[str, str | None] = Field(description="The groupBy properties' texts.")
    window_start: datetime
    window_end: datetime
    value: str | None = Field(
        description="Exact decimal; null for no rows of MAX, MIN, AVG or LATEST, and for a"
        " STRING LATEST (see valueText)."
    )
    value_text: str | None = None
    event_count: int
    partial: PartialRange | None = Field(
        None,
        description="Present only when this window overlaps the range of the metric's"
        " cancelled or unfinished backfill: its value may count part of the events.",
    )


class UsageAnswer(_Wire):
    metric_uid: str
    aggregation_type: AggregationType
    window_size: WindowSize
    window_time_zone: str
    group_by: list[str]
    items: list[UsageWindow]


class DayValue(_Wire):
    date: date
    period_start: datetime
    period_end: datetime
    value: str | None
    value_text: str | None = None
    event_count: int


class Target(_Wire):
    operator: TargetOperator
    value: str
    direction: TargetDirection
    met: bool | None = Field(description="Whether currentValue meets the target; null: no value.")
    on_track: bool | None = Field(
        description="Whether currentValue moved from previousValue in the target's direction"
        " (or held); null when either is missing."
    )


class SummaryAnswer(_Wire):
    metric_uid: str
    customer_id: str
    aggregation_type: AggregationType
    period_type: Literal["rolling", "calendar"] | None
    period_value: PeriodValue | None
    period_definition: PeriodDefinition | None
    as_of: date
    timezone: str
    current_start: datetime
    current_end: datetime
    previous_start: datetime
    previous_end: datetime
    current_value: str | None
    current_value_text: str | None = None
    current_event_count: int
    previous_value: str | None
    previous_value_text: str | None = None
    previous_event_count: int | None
    previous_refused: str | None = Field(
        None, description="Why previousValue is null although the period has rows."
    )
    timeseries: list[DayValue]
    target: Target | None
    partial: PartialRange | None = Field(
        None,
        description="Present only when the answered periods (previousStart to currentEnd)"
        " overlap the range of the metric's cancelled or unfinished backfill.",
    )
