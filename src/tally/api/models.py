"""Request and response models of the API that the contracts do not already
define. Definitions are `UsageMetricDefinition` / `UsageMetric` and values are
`MetricValue` (tally.contracts); these are the pages around them and the
adjustment of a rollup. camelCase on the wire, decimals as strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from tally.contracts.metric import UsageMetric
from tally.contracts.value import DECIMAL_PATTERN, MetricValue
from tally.core.events import parse_timestamp
from tally.core.numbers import MAX_KEY_BYTES
from tally.core.periods import TimeUnit

# PostgreSQL text cannot hold NUL; every free-text parameter says so.
NO_NUL = r"^[^\x00]*$"
# A signed decimal within the bounds the worker accepts for one SUM value.
DELTA_PATTERN = r"^[+-]?[0-9]{1,31}(\.[0-9]{1,30})?$"
# A group key is the text of a property value: the worker never writes one
# over MAX_KEY_BYTES of UTF-8 (it sits in the primary key), nor may an adjustment.
MAX_GROUP_KEY = MAX_KEY_BYTES


def _group_key_bytes(value: str) -> str:
    if len(value.encode()) > MAX_KEY_BYTES:
        raise PydanticCustomError(
            "string_too_long", "at most {max} bytes of UTF-8", {"max": MAX_KEY_BYTES}
        )
    return value


_DATE_TIME = {"type": "string", "format": "date-time"}
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def parse_moment(text: str, clamp: bool = False) -> datetime | None:
    """An RFC 3339 date-time with an offset, exact to the microsecond, in UTC;
    None if it is not one. One outside the years 1-9999 in UTC (which Python
    cannot hold) is None too, or with `clamp` the first or last instant."""
    if parse_timestamp(text) is None:
        return None
    moment = datetime.fromisoformat(text.upper())
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        if not clamp:
            return None
        return _EARLIEST if moment.year == 1 else _LATEST


def _refuse_moment() -> PydanticCustomError:
    return PydanticCustomError(
        "date_time", "must be an RFC 3339 date-time with an offset, e.g. 2026-11-01T00:00:00Z"
    )


def _moment(value: object) -> object:
    if isinstance(value, str) and (moment := parse_moment(value)) is not None:
        return moment
    raise _refuse_moment()


def _bound(value: object) -> object:
    if isinstance(value, str) and (moment := parse_moment(value, clamp=True)) is not None:
        return moment
    raise _refuse_moment()


# An instant to store or compute with: years 1-9999 in UTC.
Moment = Annotated[AwareDatetime, BeforeValidator(_moment), WithJsonSchema(_DATE_TIME)]
# A bound of a range filter: any RFC 3339 date-time (nothing is stored beyond 1-9999).
Bound = Annotated[AwareDatetime, BeforeValidator(_bound), WithJsonSchema(_DATE_TIME)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=NO_NUL)]


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class Pagination(_Wire):
    after: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page."
    )


class UsageMetricPage(_Wire):
    items: list[UsageMetric]
    pagination: Pagination


class MetricValuePage(_Wire):
    items: list[MetricValue]
    pagination: Pagination


class AdjustmentRequest(_Wire):
    """A signed correction to one rollup (tally.metric_values row)."""

    metric_uid: Text
    customer_id: Text
    time_unit: TimeUnit
    period_start: Moment = Field(
        description="The start of a period of `timeUnit` in the metric's timezone."
    )
    group_key: Annotated[
        StrictStr, Field(max_length=MAX_GROUP_KEY, pattern=NO_NUL), AfterValidator(_group_key_bytes)
    ] = Field("", description="The group; empty for SIMPLE metrics. At most 512 bytes of UTF-8.")
    delta: Annotated[StrictStr, Field(pattern=DELTA_PATTERN)] = Field(
        description="A non-zero decimal string; a whole number for COUNT and UNIQUE."
    )
    reason: Annotated[StrictStr, Field(min_length=1, max_length=1024, pattern=NO_NUL)]


class Adjustment(_Wire):
    """An adjustment as stored: the audit row."""

    model_config = ConfigDict(validate_by_name=True)  # built by the server, by field name

    id: str
    metric_uid: str
    customer_id: str
    time_unit: TimeUnit
    period_start: AwareDatetime
    period_end: AwareDatetime
    group_key: str
    delta: Annotated[str, Field(pattern=DECIMAL_PATTERN)]
    value_before: Annotated[str, Field(pattern=DECIMAL_PATTERN)]
    value_after: Annotated[str, Field(pattern=DECIMAL_PATTERN)]
    reason: str
    created_by: str = Field(description="The name of the token that made the adjustment.")
    idempotency_key: str
    created_at: AwareDatetime


class AdjustmentPage(_Wire):
    items: list[Adjustment]
    pagination: Pagination


class Health(_Wire):
    status: str
