"""One rollup as billing reads it (DESIGN 1.3), in the API's camelCase shape.

`value` travels as a decimal string so that no JSON parser can round it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr
from pydantic.alias_generators import to_camel

from tally.core.numbers import decimal_text
from tally.core.periods import TimeUnit

DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"


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
    time_unit: TimeUnit
    period_start: AwareDatetime
    period_end: AwareDatetime
    value: Annotated[StrictStr, Field(pattern=DECIMAL_PATTERN)]
    event_count: Annotated[int, Field(ge=0)]
    updated_at: AwareDatetime

    @classmethod
    def from_row(
        cls,
        *,
        metric_uid: str,
        customer_id: str,
        group_key: str,
        time_unit: str,
        period_start: datetime,
        period_end: datetime,
        value: Decimal,
        event_count: int,
        updated_at: datetime,
    ) -> MetricValue:
        return cls(
            metric_uid=metric_uid,
            customer_id=customer_id,
            group_key=group_key,
            time_unit=TimeUnit(time_unit),
            period_start=period_start,
            period_end=period_end,
            value=decimal_text(value),
            event_count=event_count,
            updated_at=updated_at,
        )
