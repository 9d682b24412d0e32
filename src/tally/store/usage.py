"""The reads behind the usage query and summaries: the stored rollups (and,
for a UNIQUE union, the members) of a planned window (tally.core.windows).

The cover of every bucket goes to PostgreSQL as three arrays (bucket index,
time unit, period start), joined on the primary key of `tally.metric_values`
or `tally.unique_members`. Rows come back per (customer, projected group,
bucket); the combination per kind is tally.core.windows.combine, in Python
with exact decimals. A UNIQUE union is `count(DISTINCT member)` over the
members of every covered period, here in SQL.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from tally.contracts.group import GroupFilterError, GroupTerm, decode_group, group_terms, names_of
from tally.contracts.metric import AggregationType, UsageMetricDefinition
from tally.core.periods import TimeUnit, zone
from tally.core.windows import Bucket, Combined, Rollup, WindowRefused, combine, plan
from tally.store.pool import Connection

BucketKey = tuple[str, str, int]  # customer, projected group text, bucket index
# The most windows one answer holds (customers x groups x windows).
MAX_ITEMS = 100_000


@dataclass(frozen=True, slots=True)
class Projection:
    """Which part of a row's group_key the answer keeps.

    `positions`: None keeps the whole group_key; () keeps none (every group
    merged); otherwise the JSON array of those elements of a several-key key."""

    positions: tuple[int, ...] | None

    def sql(self, column: str) -> str:
        if self.positions is None:
            return column
        if not self.positions:
            return "''"
        elements = ", ".join(f"{column}::jsonb -> {n:d}" for n in self.positions)
        return f"(CASE WHEN {column} LIKE '[%' THEN jsonb_build_array({elements})::text END)"


def _cover_arrays(buckets: Sequence[Bucket]) -> tuple[list[int], list[str], list[datetime]]:
    index: list[int] = []
    units: list[str] = []
    starts: list[datetime] = []
    for n, bucket in enumerate(buckets):
        for period in bucket.periods:
            index.append(n)
            units.append(period.unit.value)
            starts.append(datetime.fromtimestamp(period.start, UTC))
    return index, units, starts


def _where(
    alias: str, metric_uid: str, customers: Sequence[str], terms: Sequence[GroupTerm]
) -> tuple[str, list[object]]:
    params: list[object] = [metric_uid, list(customers)]
    clauses = [f"{alias}.metric_uid = $4", f"{alias}.customer_id = ANY($5::text[])"]
    for term in terms:
        params.append(term.text)
        if term.position is None:
            clauses.append(f"{alias}.group_key = ${len(params) + 3}")
        else:
            clauses.append(
                f"(CASE WHEN {alias}.group_key LIKE '[%' THEN {alias}.group_key::jsonb"
                f" ->> {term.position:d} END) = ${len(params) + 3}"
            )
    return " AND ".join(clauses), params


_COVER = "unnest($1::int[], $2::text[], $3::timestamptz[]) AS c(bucket, time_unit, period_start)"


async def bucket_rollups(
    connection: Connection,
    metric_uid: str,
    customers: Sequence[str],
    terms: Sequence[GroupTerm],
    projection: Projection,
    buckets: Sequence[Bucket],
    max_rows: int,
    field: str = "from",
) -> dict[BucketKey, list[Rollup]]:
    """The stored rows of every bucket, by (customer, projected group, bucket);
    WindowRefused on `field` past `max_rows` rows (never more are held)."""
    where, params = _where("v", metric_uid, customers, terms)
    sql = (
        f"SELECT v.customer_id, {projection.sql('v.group_key')} AS grp, c.bucket, v.value,"
        " v.value_text, v.value_sum, v.latest_at, v.latest_id, v.event_count"
        f" FROM {_COVER} JOIN tally.metric_values AS v"
        " ON v.time_unit = c.time_unit AND v.period_start = c.period_start"
        f" WHERE {where} LIMIT {max_rows + 1:d}"
    )
    rows = await connection.fetch(sql, *_cover_arrays(buckets), *params)
    if len(rows) > max_rows:
        raise WindowRefused(
            field,
            f"the query reads more than {max_rows} stored rows (TALLY_USAGE_MAX_ROWS):"
            " narrow from and to, ask for fewer customers, or keep fewer groups"
            " with group.<property> filters",
        )
    found: dict[BucketKey, list[Rollup]] = defaultdict(list)
    for row in rows:
        found[(row["customer_id"], row["grp"] or "", row["bucket"])].append(
            Rollup(
                value=row["value"],
                value_text=row["value_text"],
                value_sum=row["value_sum"],
                latest_at=row["latest_at"],
                latest_id=row["latest_id"],
                event_count=row["event_count"],
            )
        )
    return found


async def bucket_members(
    connection: Connection,
    metric_uid: str,
    customers: Sequence[str],
    terms: Sequence[GroupTerm],
    projection: Projection,
    buckets: Sequence[Bucket],
) -> dict[BucketKey, tuple[Decimal, int]]:
    """UNIQUE: the distinct count of the union of the covered periods' members,
    and the summed event count of their rows, by (customer, group, bucket)."""
    arrays = _cover_arrays(buckets)
    where, params = _where("m", metric_uid, customers, terms)
    members = await connection.fetch(
        f"SELECT m.customer_id, {projection.sql('m.group_key')} AS grp, c.bucket,"
        " count(DISTINCT m.member) AS members"
        f" FROM {_COVER} JOIN tally.unique_members AS m"
        " ON m.time_unit = c.time_unit AND m.period_start = c.period_start"
        f" WHERE {where} GROUP BY 1, 2, 3",
        *arrays,
        *params,
    )
    where, params = _where("v", metric_uid, customers, terms)
    events = await connection.fetch(
        f"SELECT v.customer_id, {projection.sql('v.group_key')} AS grp, c.bucket,"
        " sum(v.event_count)::bigint AS events"
        f" FROM {_COVER} JOIN tally.metric_values AS v"
        " ON v.time_unit = c.time_unit AND v.period_start = c.period_start"
        f" WHERE {where} GROUP BY 1, 2, 3",
        *arrays,
        *params,
    )
    found: dict[BucketKey, tuple[Decimal, int]] = {}
    for row in events:
        found[(row["customer_id"], row["grp"] or "", row["bucket"])] = (Decimal(0), row["events"])
    for row in members:
        key = (row["customer_id"], row["grp"] or "", row["bucket"])
        found[key] = (Decimal(row["members"]), found.get(key, (Decimal(0), 0))[1])
    return found


async def adjusted_in(
    connection: Connection, metric_uid: str, customers: Sequence[str], buckets: Sequence[Bucket]
) -> bool:
    """Whether any covered rollup was adjusted by hand: an adjusted UNIQUE
    value no longer equals its members' count, so a union cannot be exact."""
    index, units, starts = _cover_arrays(buckets)
    found = await connection.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {_COVER} JOIN tally.value_adjustments AS a"
        " ON a.time_unit = c.time_unit AND a.period_start = c.period_start"
        " WHERE a.metric_uid = $4 AND a.customer_id = ANY($5::text[]))",
        index,
        units,
        starts,
        metric_uid,
        list(customers),
    )
    return bool(found)


# -- one usage query, planned and read -------------------------------------


@dataclass(frozen=True, slots=True)
class UsageItem:
    customer_id: str
    group: dict[str, str | None]
    start: int
    end: int
    value: Decimal | None
    value_text: str | None
    event_count: int


@dataclass(frozen=True, slots=True)
class Query:
    customers: tuple[str, ...]
    start: int
    end: int
    size: TimeUnit | None
    window_zone: str
    group_by: tuple[str, ...] = ()
    group_filters: tuple[tuple[str, str], ...] = ()


def _projection(names: tuple[str, ...], group_by: Sequence[str]) -> tuple[Projection, list[str]]:
    """What of the group to keep, and the kept names in the answer's order."""
    if not group_by:
        return Projection(()), []
    try:
        terms = group_terms(names, {name: "" for name in group_by})
    except GroupFilterError as exc:
        raise WindowRefused("groupBy", f"{exc.name!r}: {exc.reason}") from None
    if len(set(group_by)) != len(group_by):
        raise WindowRefused("groupBy", "each grouping property may appear once")
    positions = [0 if term.position is None else term.position for term in terms]
    kept = [names[p] for p in positions]
    if len(names) == 1 or positions == list(range(len(names))):
        return Projection(None), kept  # the whole group_key, in definition order
    return Projection(tuple(positions)), kept


def _shown_group(
    names: tuple[str, ...], kept: list[str], projection: Projection, text: str
) -> dict[str, str | None]:
    if not kept:
        return {}
    if projection.positions is None:
        decoded = decode_group(names, text)
        if decoded is None:
            return dict.fromkeys(kept, text)
        return {name: decoded.get(name) for name in kept}
    values = orjson.loads(text) if text else [None] * len(kept)
    return dict(zip(kept, values, strict=True))


@dataclass(frozen=True, slots=True)
class MemberLimits:
    """How far back a UNIQUE union may reach (tally.config: TALLY_MEMBER_RETENTION,
    TALLY_UNIQUE_WINDOW); seconds, retention 0 keeping members forever. And the
    most stored rows one answer reads (TALLY_USAGE_MAX_ROWS)."""

    retention: float
    window: float
    max_rows: int = 200_000


def refuse_deleted_members(
    kind: AggregationType,
    buckets: Sequence[Bucket],
    limits: MemberLimits,
    now: float,
    fields: tuple[str, str] = ("from", "from"),
) -> None:
    """Refuse reading the members of `buckets` (a UNIQUE union over periods or
    groups) when they may have been deleted: a union of several periods longer
    than TALLY_UNIQUE_WINDOW, or any period, single ones too, that ended more
    than TALLY_MEMBER_RETENTION ago. `fields`: the parameters to name for
    the span and for retention (a summary has no `from`)."""
    if kind is not AggregationType.UNIQUE:
        return
    for bucket in buckets:
        # A day's slack: N local days are up to a DST jump longer than N x 24 h.
        if len(bucket.periods) > 1 and bucket.end - bucket.start > limits.window + 86400:
            raise WindowRefused(
                fields[0],
                f"a UNIQUE window over several periods may span at most TALLY_UNIQUE_WINDOW"
                f" ({limits.window / 86400:g}d), the longest the members are kept for;"
                " ask for a shorter window or windowSize",
            )
    ends = [p.end for b in buckets for p in b.periods]
    if limits.retention > 0 and ends and min(ends) <= now - limits.retention:
        raise WindowRefused(
            fields[1],
            "a UNIQUE window of several periods or merged groups is the distinct count of"
            " their members, and members of periods that ended more than"
            f" TALLY_MEMBER_RETENTION ({limits.retention / 86400:g}d) ago are deleted;"
            " move from later, or ask for single stored periods of one group",
        )


def merges_groups(names: tuple[str, ...], projection: Projection) -> bool:
    """Whether the projection folds several stored groups into one answer."""
    return projection.positions is not None and len(set(projection.positions)) < len(names)


def _subset(buckets: Sequence[Bucket], wanted: Sequence[int]) -> list[Bucket]:
    return [buckets[n] for n in wanted]


async def _group_count(
    connection: Connection,
    metric_uid: str,
    customers: Sequence[str],
    terms: Sequence[GroupTerm],
    projection: Projection,
    buckets: Sequence[Bucket],
    limit: int,
) -> int:
    """How many (customer, projected group) pairs have rows, counting to limit + 1."""
    where, params = _where("v", metric_uid, customers, terms)
    found = await connection.fetchval(
        f"SELECT count(*) FROM (SELECT DISTINCT v.customer_id, {projection.sql('v.group_key')}"
        f" FROM {_COVER} JOIN tally.metric_values AS v"
        " ON v.time_unit = c.time_unit AND v.period_start = c.period_start"
        f" WHERE {where} LIMIT {limit + 1:d}) AS g",
        *_cover_arrays(buckets),
        *params,
    )
    return int(found)


def _too_many(count: int, field: str) -> WindowRefused:
    return WindowRefused(
        field,
        f"the answer would hold {count} windows or more, past {MAX_ITEMS}"
        " (customers x groups x windows): use a larger windowSize, fewer customers,"
        " or group.<property> filters",
    )


async def run_query(
    connection: Connection,
    metric: UsageMetricDefinition,
    query: Query,
    limits: MemberLimits,
    now: float,
) -> list[UsageItem]:
    """The usage of `query.customers` in each window, exactly (WindowRefused otherwise)."""
    try:
        window_zone = zone(query.window_zone)
    except ValueError as exc:
        raise WindowRefused("windowTimeZone", str(exc)) from None
    # Planning is pure CPU, bounded by MAX_PERIODS: off the event loop.
    buckets = await asyncio.to_thread(
        plan,
        query.start,
        query.end,
        query.size,
        window_zone,
        set(metric.time_units),
        zone(metric.timezone),
    )
    if len(query.customers) * len(buckets) > MAX_ITEMS:
        raise _too_many(len(query.customers) * len(buckets), "windowSize")
    names = names_of(metric)
    projection, kept = _projection(names, query.group_by)
    try:
        terms = group_terms(names, dict(query.group_filters))
    except GroupFilterError as exc:
        raise WindowRefused(f"group.{exc.name}", exc.reason) from None
    kind = metric.aggregation_type
    # Members only for a union: several periods, or several groups merged. One
    # period of one group is its stored row (adjusted or not, members kept or not).
    merged = merges_groups(names, projection)
    unions = [
        n
        for n, b in enumerate(buckets)
        if kind is AggregationType.UNIQUE and (merged or len(b.periods) > 1)
    ]
    union_set = set(unions)
    rows_of = [n for n in range(len(buckets)) if n not in union_set]
    combined: dict[BucketKey, Combined] = {}
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        if kept:
            limit = MAX_ITEMS // len(buckets)
            count = await _group_count(
                connection, metric.uid, query.customers, terms, projection, buckets, limit
            )
            if count > limit:
                raise _too_many(count * len(buckets), "groupBy")
        if unions:
            union_buckets = _subset(buckets, unions)
            refuse_deleted_members(kind, union_buckets, limits, now)
            if await adjusted_in(connection, metric.uid, query.customers, union_buckets):
                raise WindowRefused(
                    "windowSize",
                    "a rollup in this window was adjusted by hand, so the union of its members"
                    " is not its value: ask for windows of single stored periods",
                )
            for (customer, text, n), (count_, events) in (
                await bucket_members(
                    connection, metric.uid, query.customers, terms, projection, union_buckets
                )
            ).items():
                combined[(customer, text, unions[n])] = Combined(count_, None, events)
        if rows_of:
            for (customer, text, n), rows in (
                await bucket_rollups(
                    connection,
                    metric.uid,
                    query.customers,
                    terms,
                    projection,
                    _subset(buckets, rows_of),
                    limits.max_rows,
                )
            ).items():
                combined[(customer, text, rows_of[n])] = combine(kind, rows)
    groups: dict[tuple[str, str], None] = {}
    if not kept:
        groups = {(customer, ""): None for customer in query.customers}
    for customer, text, _ in sorted(combined):
        groups[(customer, text)] = None
    empty = kind in (AggregationType.COUNT, AggregationType.SUM, AggregationType.UNIQUE)
    items = []
    for customer, text in sorted(groups):
        shown = _shown_group(names, kept, projection, text)
        for n, bucket in enumerate(buckets):
            found = combined.get((customer, text, n))
            if found is None:
                found = Combined(Decimal(0) if empty else None, None, 0)
            items.append(
                UsageItem(
                    customer,
                    shown,
                    bucket.start,
                    bucket.end,
                    found.value,
                    found.value_text,
                    found.event_count,
                )
            )
    return items
