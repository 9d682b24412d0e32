"""One rollup as billing reads it (docs/design.md §2.3), in the API's camelCase shape.

`value` travels as a decimal string so that no JSON parser can round it; it
is null for a STRING LATEST, whose text is `valueText`. `sum` (AVG),
`latestAt` and `latestId` (LATEST) are present only for the kinds that keep
them (docs/metering-model.md); `group` is `groupKey` by property name.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr
from pydantic.alias_generators import to_camel

from tally.contracts.group import Group
from tally.core.numbers import decimal_text
from tally.core.periods import TimeUnit

DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"
# RFC 3339 in UTC, always to the microsecond: a LATEST winner's exact time.
MICROS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"
Decimal_ = Annotated[StrictStr, Field(pattern=DECIMAL_PATTERN)]
# Left out of the wire form when null: the kinds that do not keep them.
OPTIONAL_FIELDS = ("valueText", "sum", "latestAt", "latestId", "partial")


def micros_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PartialRange(BaseModel):
    """Why a metric's values cover only part of their range (docs/backfill.md)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        frozen=True,
        extra="forbid",
    )

    reason: Literal["backfill_cancelled", "backfill_running"] = Field(
        description="backfill_cancelled: the backfill of the events before the metric existed"
        " was cancelled; events since are counted, earlier ones only in part."
        " backfill_running: that backfill has not finished (running, or killed and not"
        " resumed yet); recordsDone says how far it got."
    )
    backfill_from: StrictStr = Field(
        description="Where the backfill started: 'earliest' or an instant (RFC 3339)."
    )
    records_done: Annotated[int, Field(ge=0)] = Field(description="Records of its range counted.")
    records_total: Annotated[int, Field(ge=0)] = Field(description="Records in its range.")
    cancelled_at: AwareDatetime | None


class MetricValue(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        frozen=True,
        extra="forbid",
    )

    metric_uid: StrictStr
    customer_id: StrictStr
    group_key: StrictStr
    group: dict[str, StrictStr | None] | None = Field(
        description="groupKey by grouping property, as the definition names them: {} when"
        " ungrouped, null for a missing key of several. Null when the metric's definition"
        " is not stored or groupKey is not one its grouping writes."
    )
    time_unit: TimeUnit
    period_start: AwareDatetime
    period_end: AwareDatetime
    value: Decimal_ | None = Field(description="Null for a STRING LATEST (see valueText).")
    value_text: StrictStr | None = Field(
        None, description="A STRING LATEST's value; absent for numbers."
    )
    sum: Decimal_ | None = Field(
        None, description="AVG only: the exact sum; value is sum / eventCount to 12 decimals."
    )
    latest_at: Annotated[StrictStr, Field(pattern=MICROS_PATTERN)] | None = Field(
        None,
        description="LATEST only: the winning event's timestamp, UTC, to the microsecond.",
        json_schema_extra={"format": "date-time"},
    )
    latest_id: StrictStr | None = Field(None, description="LATEST only: the winning event's id.")
    event_count: Annotated[int, Field(ge=0)]
    updated_at: AwareDatetime
    partial: PartialRange | None = Field(
        None,
        description="Present only when the metric's values cover part of their range"
        " (a cancelled backfill); absent when they are complete.",
    )

    @classmethod
    def from_row(
        cls,
        *,
        metric_uid: str,
        customer_id: str,
        group_key: str,
        group: Group | None,
        time_unit: str,
        period_start: datetime,
        period_end: datetime,
        value: Decimal | None,
        event_count: int,
        updated_at: datetime,
        value_text: str | None = None,
        value_sum: Decimal | None = None,
        latest_at: datetime | None = None,
        latest_id: str | None = None,
    ) -> MetricValue:
        return cls(
            metric_uid=metric_uid,
            customer_id=customer_id,
            group_key=group_key,
            group=group,
            time_unit=TimeUnit(time_unit),
            period_start=period_start,
            period_end=period_end,
            value=None if value is None else decimal_text(value),
            value_text=value_text,
            sum=None if value_sum is None else decimal_text(value_sum),
            latest_at=None if latest_at is None else micros_text(latest_at),
            latest_id=latest_id,
            event_count=event_count,
            updated_at=updated_at,
        )

    def wire(self) -> dict[str, Any]:
        """The API's JSON: camelCase, the kind-specific fields only where they apply."""
        document = self.model_dump(mode="json", by_alias=True)
        for name in OPTIONAL_FIELDS:
            if document[name] is None:
                del document[name]
        return document
