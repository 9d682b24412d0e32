"""`/metric-values`: rollups as billing reads them, and manual adjustments.

Values are `MetricValue` rows (decimals as strings) in primary-key order with
a keyset cursor. An adjustment adds a signed delta to one rollup in the same
transaction as its audit row; see tally.store.value_adjustments.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tally.api import idempotency
from tally.api.auth import Admin, Reader
from tally.api.body import read_json, require_object
from tally.api.cursor import ADJUSTMENTS, METRIC_VALUES, decode, decode_refusal, encode
from tally.api.deps import (
    AFTER,
    DEFAULT_LIMIT,
    AdjustmentsCursor,
    Limit,
    MetricValuesCursor,
    Pool,
    body_ref,
    json_response,
    text_query,
)
from tally.api.errors import ApiError, body_errors, responses
from tally.api.models import (
    MAX_GROUP_KEY,
    Adjustment,
    AdjustmentPage,
    AdjustmentRequest,
    Bound,
    MetricValuePage,
)
from tally.contracts.group import (
    GroupFilterError,
    GroupTerm,
    group_key_problem,
    group_terms,
    names_of,
)
from tally.contracts.metric import AggregationType, MetricSource, MetricType
from tally.contracts.value import MetricValue, PartialRange
from tally.core.numbers import decimal_text
from tally.core.periods import TimeUnit, period_bounds, period_end, zone
from tally.store import metric_values as store
from tally.store import value_adjustments as adjustments
from tally.store.backfill import partial_ranges
from tally.store.definitions import metric_by_uid
from tally.store.pool import Connection
from tally.telemetry.logs import Log

router = APIRouter(prefix="/metric-values", tags=["metric values"])
log = Log("tally.api")


MetricUid = Annotated[str | None, text_query("metricUid", "Only this metric.")]
CustomerId = Annotated[str | None, text_query("customerId", "Only this customer.")]
GroupKey = Annotated[
    str | None,
    # No group key is longer (in bytes, so in characters either).
    text_query("groupKey", "Only this group ('' is the ungrouped one).", 0, MAX_GROUP_KEY),
]
GROUP_PREFIX = "group."
# The kinds a signed delta can correct: value = value + delta means something.
ADJUSTABLE = (AggregationType.COUNT, AggregationType.SUM, AggregationType.UNIQUE)
Unit = Annotated[TimeUnit | None, Query(alias="timeUnit", description="Only this time unit.")]


@router.get(
    "",
    response_model=MetricValuePage,
    responses=responses(401, 403, 422),
    summary="List metric values (rollups)",
)
async def list_metric_values(
    request: Request,
    principal: Reader,
    pool: Pool,
    metric_uid: MetricUid = None,
    customer_id: CustomerId = None,
    time_unit: Unit = None,
    group_key: GroupKey = None,
    since: Annotated[
        Bound | None, Query(alias="from", description="Periods starting at or after this.")
    ] = None,
    until: Annotated[
        Bound | None, Query(alias="to", description="Periods starting before this.")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: Annotated[MetricValuesCursor | None, AFTER] = None,
) -> Response:
    """Rollups in (metricUid, customerId, timeUnit, periodStart, groupKey) order.
    Give metricUid for an index range scan; other filters alone scan the table.

    `group.<property>=<text>` (repeatable for different properties, with
    metricUid) keeps the rows whose group has that text for that grouping
    property, named as the definition writes it or by any spelling of the same
    path. A missing key of a several-key group (null) matches no text."""
    wanted = _group_filters(request)
    key = None
    if after is not None:
        uid, customer, unit, start, group = decode(METRIC_VALUES, after, (str, str, str, int, str))
        if not store.MIN_MICROS <= int(start) <= store.MAX_MICROS:
            raise decode_refusal()
        key = (str(uid), str(customer), str(unit), int(start), str(group))
    async with pool.acquire() as connection:
        terms = await _group_terms(connection, metric_uid, wanted)
        where = store.ValueFilter(
            metric_uid,
            customer_id,
            time_unit.value if time_unit else None,
            group_key,
            terms,
            since,
            until,
        )
        values = await store.page_values(connection, where, key, limit + 1)
        partial = await partial_ranges(connection, (v.metric_uid for v in values[:limit]))
    more = len(values) > limit
    values = values[:limit]
    cursor = encode(METRIC_VALUES, store.value_key(values[-1])) if more else None
    items = [_shown(v, partial.get(v.metric_uid)) for v in values]
    return json_response({"items": items, "pagination": {"after": cursor}})


def _shown(value: MetricValue, partial: PartialRange | None = None) -> dict[str, Any]:
    """A value as sent; with the partial-range marker of its metric, if any."""
    if partial is not None:
        value = value.model_copy(update={"partial": partial})
    return value.wire()


def _group_filters(request: Request) -> dict[str, str]:
    """The `group.<property>` query parameters, each at most once."""
    wanted: dict[str, str] = {}
    for name, text in request.query_params.multi_items():
        if not name.startswith(GROUP_PREFIX):
            continue
        loc = ["query", name]
        if name in wanted or name == GROUP_PREFIX:
            why = "give each group property once" if name in wanted else "name a property"
            raise ApiError.one(422, loc, why, "value_error")
        if "\x00" in text or len(text.encode()) > MAX_GROUP_KEY:
            raise ApiError.one(
                422, loc, f"at most {MAX_GROUP_KEY} bytes of UTF-8, without NUL", "value_error"
            )
        wanted[name] = text
    return {name.removeprefix(GROUP_PREFIX): text for name, text in wanted.items()}


async def _group_terms(
    connection: Connection, metric_uid: str | None, wanted: dict[str, str]
) -> tuple[GroupTerm, ...]:
    if not wanted:
        return ()
    first = f"{GROUP_PREFIX}{next(iter(wanted))}"
    if metric_uid is None:
        raise ApiError.one(
            422,
            ["query", first],
            "needs metricUid: a group's properties are those of one metric",
            "value_error",
        )
    metric = await metric_by_uid(connection, metric_uid)
    if metric is None:
        raise ApiError.one(
            422, ["query", first], f"no metric has the uid {metric_uid!r}", "not_found"
        )
    try:
        return group_terms(names_of(metric), wanted)
    except GroupFilterError as exc:
        raise ApiError.one(
            422, ["query", f"{GROUP_PREFIX}{exc.name}"], exc.reason, "unknown_property"
        ) from None


def _adjustment(row: asyncpg.Record) -> dict[str, Any]:
    return Adjustment(
        id=str(row["id"]),
        metric_uid=row["metric_uid"],
        customer_id=row["customer_id"],
        time_unit=TimeUnit(row["time_unit"]),
        period_start=row["period_start"],
        period_end=row["period_end"],
        group_key=row["group_key"],
        delta=decimal_text(row["delta"]),
        value_before=decimal_text(row["value_before"]),
        value_after=decimal_text(row["value_after"]),
        reason=row["reason"],
        created_by=row["principal"],
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
    ).model_dump(mode="json", by_alias=True)


def _refuse(field: str, message: str, type: str = "value_error") -> ApiError:
    return ApiError.one(422, ["body", field], message, type)


def _parse_adjustment(document: dict[str, Any]) -> AdjustmentRequest:
    try:
        request = AdjustmentRequest.model_validate(document)
    except ValidationError as exc:
        raise body_errors(exc) from None
    if Decimal(request.delta) == 0:
        raise _refuse("delta", "must not be zero")
    return request


def _period(request: AdjustmentRequest, unit: TimeUnit, timezone: str) -> datetime:
    """The end of the period that starts at periodStart; 422 if none starts there."""
    start = request.period_start
    tz = zone(timezone)
    if not 1 < start.year < 9999:
        # The first and last instants Python holds are PostgreSQL's ±infinity.
        raise _refuse("periodStart", "must be within the years 2-9998", "period_start")
    try:
        if start.microsecond:
            raise ValueError("not a whole second")
        end = period_end(int(start.timestamp()), unit, tz)
        return datetime.fromtimestamp(end, start.tzinfo)
    except (ValueError, OverflowError, OSError):
        pass
    hint = ""
    try:
        first, _ = period_bounds(start.timestamp(), unit, tz)
        hint = (
            f"; the {unit} containing it starts at {datetime.fromtimestamp(first, tz).isoformat()}"
        )
    except (ValueError, OverflowError, OSError):
        pass
    raise _refuse(
        "periodStart",
        f"is not the start of a {unit} period in {timezone}{hint}",
        "period_start",
    )


@router.post(
    "/adjustments",
    status_code=201,
    response_model=Adjustment,
    responses=responses(401, 403, 413, 415, 422),
    openapi_extra=body_ref("AdjustmentRequest", "A signed correction to one rollup."),
    summary="Adjust one rollup",
)
async def create_adjustment(
    request: Request,
    principal: Admin,
    pool: Pool,
    idempotency_key: idempotency.RequiredKey,
) -> Response:
    """Adds `delta` to the rollup (creating it if missing) and records who, why and
    the values before and after, in one transaction. Only COUNT, SUM and UNIQUE
    metrics of events are adjustable (a delta means nothing to a MAX, MIN, AVG or
    LATEST; an EXTERNAL metric's values are corrected where they are computed).
    Never makes a COUNT or UNIQUE value negative; event counts are left alone. A
    several-key groupKey is the canonical JSON array the worker writes."""
    document = require_object(await read_json(request))
    wanted = _parse_adjustment(document)
    delta = Decimal(wanted.delta)

    async def work(connection: Connection) -> Response:
        metric = await metric_by_uid(connection, wanted.metric_uid)
        if metric is None:
            raise _refuse("metricUid", f"no metric has the uid {wanted.metric_uid!r}", "not_found")
        if metric.source is MetricSource.EXTERNAL:
            # Its values are computed elsewhere: correcting one is for where it
            # was computed (docs/decisions.md, "External values: no adjustments").
            raise _refuse(
                "metricUid",
                f"{metric.uid} is an EXTERNAL metric: its values are computed elsewhere and"
                " are not adjustable",
                "not_adjustable",
            )
        if wanted.time_unit not in metric.time_units:
            units = ", ".join(metric.time_units)
            raise _refuse("timeUnit", f"{metric.uid} is aggregated by {units} only")
        if metric.aggregation_type not in ADJUSTABLE:
            raise _refuse(
                "metricUid",
                f"{metric.uid} is a {metric.aggregation_type} metric: a delta cannot be added"
                " to a MAX, MIN, AVG or LATEST value (only COUNT, SUM and UNIQUE are adjustable)",
                "not_adjustable",
            )
        if metric.metric_type is MetricType.SIMPLE and wanted.group_key:
            raise _refuse("groupKey", f"{metric.uid} is not GROUPED: its only group is ''")
        if (problem := group_key_problem(names_of(metric), wanted.group_key)) is not None:
            raise _refuse("groupKey", problem)
        counted = metric.aggregation_type is not AggregationType.SUM
        if counted and delta != delta.to_integral_value():
            raise _refuse("delta", f"a {metric.aggregation_type} changes by whole numbers")
        end = _period(wanted, wanted.time_unit, metric.timezone)
        rollup = adjustments.Rollup(
            metric.uid,
            wanted.customer_id,
            wanted.time_unit.value,
            wanted.period_start,
            end,
            wanted.group_key,
        )
        after = await adjustments.add_to_rollup(connection, rollup, delta)
        if counted and after < 0:
            raise _refuse(
                "delta",
                f"would make a {metric.aggregation_type} value negative "
                f"({decimal_text(after - delta)} {'+' if delta > 0 else '-'} {decimal_text(abs(delta))})",
                "negative_value",
            )
        row = await adjustments.record(
            connection,
            rollup,
            delta=delta,
            value_after=after,
            reason=wanted.reason,
            principal=principal.name,
            idempotency_key=idempotency_key,
        )
        log.info(
            "value adjusted",
            metric=metric.uid,
            customer=wanted.customer_id,
            unit=wanted.time_unit.value,
            period_start=wanted.period_start.isoformat(),
            delta=wanted.delta,
            value=decimal_text(after),
            by=principal.name,
        )
        return json_response(_adjustment(row), 201)

    return await idempotency.run(
        pool,
        operation="POST /metric-values/adjustments",
        key=idempotency_key,
        document=document,
        principal=principal.name,
        work=work,
    )


@router.get(
    "/adjustments",
    response_model=AdjustmentPage,
    responses=responses(401, 403, 422),
    summary="The audit trail of adjustments",
)
async def list_adjustments(
    principal: Reader,
    pool: Pool,
    metric_uid: MetricUid = None,
    customer_id: CustomerId = None,
    time_unit: Unit = None,
    group_key: GroupKey = None,
    period_start: Annotated[
        Bound | None, Query(alias="periodStart", description="Only this period.")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: Annotated[AdjustmentsCursor | None, AFTER] = None,
) -> Response:
    """Adjustments in the order they were made, oldest first."""
    after_seq = None
    if after is not None:
        (seq,) = decode(ADJUSTMENTS, after, (int,))
        after_seq = int(seq)
    where = adjustments.AdjustmentFilter(
        metric_uid, customer_id, time_unit.value if time_unit else None, group_key, period_start
    )
    async with pool.acquire() as connection:
        rows = await adjustments.page_adjustments(connection, where, after_seq, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode(ADJUSTMENTS, [rows[-1]["seq"]]) if more else None
    return json_response({"items": [_adjustment(r) for r in rows], "pagination": {"after": cursor}})
