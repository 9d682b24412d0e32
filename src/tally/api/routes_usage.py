"""`GET /usage-metrics/{uid}/usage` and `/summary`: usage over any window
that is a union of stored periods, exactly, and rolling or calendar
summaries from day rollups (docs/api.md, "Usage"; tally.core.windows)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import StringConstraints, WithJsonSchema

from tally.api.auth import Reader
from tally.api.deps import Pool, json_response
from tally.api.errors import ApiError, responses
from tally.api.models import NO_NUL, Bound, parse_moment
from tally.api.routes_values import _group_filters
from tally.api.usage_models import (
    DayValue,
    PeriodDefinition,
    PeriodValue,
    SummaryAnswer,
    Target,
    UsageAnswer,
    UsageWindow,
    WindowSize,
)
from tally.contracts.metric import (
    UID_PATTERN,
    TargetDirection,
    TargetOperator,
    UsageMetric,
)
from tally.core.numbers import decimal_text
from tally.core.periods import TimeUnit, zone
from tally.core.windows import (
    Combined,
    WindowRefused,
    definition_days,
    instants,
    summary_days,
)
from tally.store import usage as store
from tally.store.definitions import metric_by_uid
from tally.store.usage_partial import PartialSpan, partial_span
from tally.store.usage_summary import run_summary

router = APIRouter(prefix="/usage-metrics", tags=["usage"])

MAX_CUSTOMERS = 100
CustomerText = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]
Uid = Annotated[str, Path(pattern=UID_PATTERN, max_length=128, description="The metric's uid.")]
ZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]


def _refused(exc: WindowRefused) -> ApiError:
    return ApiError.one(422, ["query", exc.field], exc.reason, "window_refused")


async def _metric(pool: Any, uid: str) -> UsageMetric:
    async with pool.acquire() as connection:
        metric = await metric_by_uid(connection, uid)
    if metric is None or metric.is_deleted:
        raise ApiError.one(
            404, ["path", "uid"], f"no usage metric has the uid {uid!r}", "not_found"
        )
    return metric


def _bounds(since: datetime, until: datetime) -> tuple[int, int]:
    """from and to as whole POSIX seconds; every problem with them in one 422."""
    problems = [
        {
            "loc": ["query", field],
            "msg": "must be a whole second (periods start on whole seconds)",
            "type": "value_error",
        }
        for field, moment in (("from", since), ("to", until))
        if moment.microsecond != 0  # not the float timestamp: it rounds far from 1970
    ]
    if until <= since:
        problems.append(
            {"loc": ["query", "to"], "msg": "must be after from", "type": "value_error"}
        )
    if problems:
        raise ApiError(422, problems)
    return int(since.timestamp()), int(until.timestamp())


def _text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


async def _partial(request: Request, connection: Any, uid: str) -> PartialSpan | None:
    settings = request.app.state.settings
    return await partial_span(
        connection, uid, float(settings.max_lateness), float(settings.max_future_skew)
    )


def _missing_half(field: str, other: str | None, metric: UsageMetric) -> str:
    """Why the summary needs `field` of Squad's pair (`other`: the half given
    or stored): neither the query nor the metric gives it, and a stored
    periodDefinition is no half of the pair."""
    what = "periodType (rolling or calendar)" if field == "periodType" else field
    if other is None:
        message = f"{what} is required without periodDefinition; the metric stores no period pair"
    else:
        message = f"{what} is required with {other} (or give periodDefinition alone)"
        message += f"; the metric stores no {field}"
    stored = metric.period_definition
    if stored is not None:
        message += (
            f" (its periodDefinition {stored.value} is used only when none of"
            " periodDefinition, periodType and periodValue is given)"
        )
    return message


def _without_empty_partial(document: dict[str, Any]) -> dict[str, Any]:
    """`partial` is absent when complete, as on /metric-values."""
    if document.get("partial", 0) is None:
        del document["partial"]
    return document


def _limits(request: Request) -> store.MemberLimits:
    settings = request.app.state.settings
    return store.MemberLimits(
        float(settings.member_retention),
        float(settings.unique_window),
        int(settings.usage_max_rows),
    )


@router.get(
    "/{uid}/usage",
    response_model=UsageAnswer,
    responses=responses(401, 403, 404, 422),
    summary="Usage of customers over a window, exactly",
)
async def usage(
    request: Request,
    principal: Reader,
    pool: Pool,
    uid: Uid,
    customer_id: Annotated[
        list[CustomerText],
        Query(
            alias="customerId",
            min_length=1,
            max_length=MAX_CUSTOMERS,
            description=f"The customers (repeat the parameter, at most {MAX_CUSTOMERS}).",
        ),
    ],
    since: Annotated[Bound, Query(alias="from", description="The window's start, inclusive.")],
    until: Annotated[Bound, Query(alias="to", description="The window's end, exclusive.")],
    window_size: Annotated[
        WindowSize,
        Query(alias="windowSize", description="Cut the window into periods of this unit."),
    ] = "none",
    window_time_zone: Annotated[
        ZoneName | None,
        Query(
            alias="windowTimeZone",
            description="The zone of the windowSize periods; default the metric's timezone.",
        ),
    ] = None,
    group_by: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=NO_NUL)]]
        | None,
        Query(alias="groupBy", max_length=5, description="Grouping properties to keep apart."),
    ] = None,
) -> Response:
    """COUNT and SUM add the stored periods up, MAX and MIN take the extreme,
    LATEST the latest, AVG combines sums and counts, and UNIQUE counts the
    distinct members of the union. A window that is not a union of the
    metric's stored periods is refused (422) naming the unit and zone that
    would answer it; nothing is approximated. `group.<property>=<text>`
    keeps only that group's rows."""
    wanted = _group_filters(request)
    start, end = _bounds(since, until)
    metric = await _metric(pool, uid)
    query = store.Query(
        customers=tuple(dict.fromkeys(customer_id)),
        start=start,
        end=end,
        size=None if window_size == "none" else TimeUnit(window_size),
        window_zone=window_time_zone or metric.timezone,
        group_by=tuple(group_by or ()),
        group_filters=tuple(wanted.items()),
    )
    try:
        async with pool.acquire() as connection:
            # The marker before the values (tally.store.usage_partial, "read first").
            span = await _partial(request, connection, metric.uid)
            items = await store.run_query(connection, metric, query, _limits(request), time.time())
    except WindowRefused as exc:
        raise _refused(exc) from None
    except (ValueError, OverflowError):
        # Periods past the years 1-9999 (the stored range) cannot be computed.
        raise ApiError.one(
            422,
            ["query", "from"],
            "the window's periods fall outside the years 1 to 9999",
            "value_error",
        ) from None
    body = UsageAnswer(
        metric_uid=metric.uid,
        aggregation_type=metric.aggregation_type,
        window_size=window_size,
        window_time_zone=query.window_zone,
        group_by=list(query.group_by),
        items=[
            UsageWindow(
                customer_id=i.customer_id,
                group=i.group,
                window_start=datetime.fromtimestamp(i.start, UTC),
                window_end=datetime.fromtimestamp(i.end, UTC),
                value=_text(i.value),
                value_text=i.value_text,
                event_count=i.event_count,
                partial=span.marker if span and span.overlaps(i.start, i.end) else None,
            )
            for i in items
        ],
    )
    document = body.model_dump(mode="json", by_alias=True)
    document["items"] = [_without_empty_partial(i) for i in document["items"]]
    return json_response(document)


def _as_of(text: str | None, zone_name: str) -> date:
    """asOf: a date, or a date-time taken as its local date in the metric's zone."""
    if text is None:
        return datetime.now(zone(zone_name)).date()
    found: date | None = None
    if len(text) == 10:
        try:
            found = date.fromisoformat(text)
        except ValueError:
            found = None
    else:
        moment = parse_moment(text)
        if moment is not None:
            try:
                found = moment.astimezone(zone(zone_name)).date()
            except (OverflowError, ValueError):
                found = None
    if found is None:
        raise ApiError.one(
            422,
            ["query", "asOf"],
            "must be a date (2026-03-15) or an RFC 3339 date-time with an offset",
            "value_error",
        )
    return found


def _target(metric: UsageMetric, current: Combined, previous: Combined | None) -> Target | None:
    if metric.target_operator is None or metric.target_value is None:
        return None
    direction = metric.target_direction or TargetDirection.UP
    goal = metric.target_value
    now = current.value
    met = None
    if now is not None:
        met = {
            TargetOperator.GREATER_THAN: now > goal,
            TargetOperator.LESS_THAN: now < goal,
            TargetOperator.EQUAL_TO: now == goal,
        }[metric.target_operator]
    on_track = None
    if now is not None and previous is not None and previous.value is not None:
        on_track = (
            now >= previous.value if direction is TargetDirection.UP else now <= previous.value
        )
    return Target(
        operator=metric.target_operator,
        value=decimal_text(goal),
        direction=direction,
        met=met,
        on_track=on_track,
    )


@router.get(
    "/{uid}/summary",
    response_model=SummaryAnswer,
    responses=responses(401, 403, 404, 422),
    summary="A customer's rolling or calendar summary, with the target's status",
)
async def summary(
    request: Request,
    principal: Reader,
    pool: Pool,
    uid: Uid,
    customer_id: Annotated[CustomerText, Query(alias="customerId", description="The customer.")],
    period_type: Annotated[
        Literal["rolling", "calendar"] | None,
        Query(alias="periodType", description="Squad's periodType (with periodValue)."),
    ] = None,
    period_value: Annotated[
        PeriodValue | None,
        Query(alias="periodValue", description="Squad's periodValue; N-day values are rolling."),
    ] = None,
    period_definition: Annotated[
        PeriodDefinition | None,
        Query(
            alias="periodDefinition",
            description="Exante's period_definition, instead of periodType and periodValue.",
        ),
    ] = None,
    as_of: Annotated[
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=64, pattern=NO_NUL),
            WithJsonSchema(
                {
                    "anyOf": [
                        {"type": "string", "format": "date"},
                        {"type": "string", "format": "date-time"},
                    ]
                }
            ),
        ]
        | None,
        Query(
            alias="asOf",
            description="The last day: a date, or a date-time taken in the metric's timezone;"
            " default today there.",
        ),
    ] = None,
) -> Response:
    """currentValue over the period ending with asOf's day (rolling: asOf and
    the days before it; calendar: the whole calendar period holding asOf),
    previousValue over the equal period before, a daily timeseries, and the
    target's status. Computed from day rollups (and members, for UNIQUE) in
    the metric's timezone; a metric without 'day' in its timeUnits is refused."""
    metric = await _metric(pool, uid)
    if period_definition is None and period_type is None and period_value is None:
        # None given: the metric's own period (Squad's periodType and periodValue, or
        # Exante's periodDefinition), each of Squad's pair missing one still refused.
        if metric.period_type is not None or metric.period_value is not None:
            period_type = None if metric.period_type is None else metric.period_type.value
            period_value = None if metric.period_value is None else metric.period_value.value
        elif metric.period_definition is not None:
            period_definition = metric.period_definition.value
    elif period_definition is None:
        if period_type is None and metric.period_type is not None:
            period_type = metric.period_type.value
        if period_value is None and metric.period_value is not None:
            period_value = metric.period_value.value
    problems = []
    if period_definition is not None and (period_type is not None or period_value is not None):
        problems.append(
            ("periodDefinition", "give periodDefinition or periodType and periodValue, not both")
        )
    elif period_definition is None:
        if period_type is None:
            other = None if period_value is None else "periodValue"
            problems.append(("periodType", _missing_half("periodType", other, metric)))
        if period_value is None:
            other = None if period_type is None else "periodType"
            problems.append(("periodValue", _missing_half("periodValue", other, metric)))
    if period_type == "calendar" and period_value in ("7-day", "30-day", "90-day"):
        problems.append(("periodValue", f"{period_value} is a rolling period only"))
    if problems:
        raise ApiError(
            422, [{"loc": ["query", f], "msg": m, "type": "value_error"} for f, m in problems]
        )
    day = _as_of(as_of, metric.timezone)
    try:
        if period_definition is not None:
            current, previous = definition_days(day, period_definition)
        else:
            assert period_type is not None
            assert period_value is not None
            current, previous = summary_days(day, period_type, period_value)
        local = zone(metric.timezone)
        now_bounds, before_bounds = instants(current, local), instants(previous, local)
        async with pool.acquire() as connection:
            # The marker before the values (tally.store.usage_partial, "read first").
            span = await _partial(request, connection, metric.uid)
            found = await run_summary(
                connection,
                metric,
                customer_id,
                now_bounds,
                before_bounds,
                _limits(request),
                time.time(),
            )
    except WindowRefused as exc:
        raise _refused(exc) from None
    except (ValueError, OverflowError):
        raise ApiError.one(
            422, ["query", "asOf"], "the period falls outside the years 1 to 9999", "value_error"
        ) from None
    before = found.previous

    def at(seconds: int) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    body = SummaryAnswer(
        metric_uid=metric.uid,
        customer_id=customer_id,
        aggregation_type=metric.aggregation_type,
        period_type=period_type,
        period_value=period_value,
        period_definition=period_definition,
        as_of=day,
        timezone=metric.timezone,
        current_start=at(now_bounds[0]),
        current_end=at(now_bounds[1]),
        previous_start=at(before_bounds[0]),
        previous_end=at(before_bounds[1]),
        current_value=_text(found.current.value),
        current_value_text=found.current.value_text,
        current_event_count=found.current.event_count,
        previous_value=None if before is None else _text(before.value),
        previous_value_text=None if before is None else before.value_text,
        previous_event_count=None if before is None else before.event_count,
        previous_refused=found.previous_refused,
        timeseries=[
            DayValue(
                date=datetime.fromtimestamp(start, local).date(),
                period_start=at(start),
                period_end=at(end),
                value=_text(value.value),
                value_text=value.value_text,
                event_count=value.event_count,
            )
            for start, end, value in found.timeseries
        ],
        target=_target(metric, found.current, before),
        partial=span.marker if span and span.overlaps(before_bounds[0], now_bounds[1]) else None,
    )
    return json_response(_without_empty_partial(body.model_dump(mode="json", by_alias=True)))
