"""`tally values` and `tally status`: reading what the workers wrote."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from tally.cli.options import UserError, settings_from
from tally.config import Settings
from tally.contracts.group import GroupFilterError, GroupTerm, group_terms
from tally.contracts.value import MetricValue, PartialRange
from tally.core.periods import zone
from tally.store.backfill import partial_ranges
from tally.store.definitions import list_metrics
from tally.store.metric_values import ValueFilter, grouping_of, page_values
from tally.store.pool import Connection, database
from tally.telemetry import logs

VALUE_COLUMNS = (
    "metric",
    "customer",
    "group",
    "unit",
    "period_start",
    "period_end",
    "value",
    "events",
    "updated_at",
    # Since the metering kinds (issue 13); after the older columns, which keep their places.
    "group_by_name",
    "text",
    "sum",
    "latest_at",
    "latest_id",
)
# Left out of a table when no row shown has them (COUNT, SUM and UNIQUE never do).
KIND_COLUMNS = ("text", "sum", "latest_at", "latest_id")


def parse_moment(text: str, flag: str) -> datetime:
    """A date (`2026-11-01`, midnight UTC) or an RFC 3339 date-time."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{flag}: {text!r} is not a date (2026-11-01) or date-time (2026-11-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise UserError(f"{flag}: {text!r} needs an offset, e.g. Z or +01:00")
    return moment


def group_filters(pairs: list[str], metric: str | None) -> dict[str, str]:
    """`--group-by-name PROPERTY=TEXT` flags as {property: text}."""
    wanted: dict[str, str] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--group-by-name: {pair!r} is not PROPERTY=TEXT")
        if name in wanted:
            raise UserError(f"--group-by-name: {name!r} is given twice")
        wanted[name] = text
    if wanted and metric is None:
        raise UserError("--group-by-name needs --metric: a group's properties are one metric's")
    return wanted


async def _group_terms(
    connection: Connection, metric: str | None, wanted: dict[str, str]
) -> tuple[GroupTerm, ...]:
    if not wanted or metric is None:
        return ()
    names = (await grouping_of(connection, [metric])).get(metric)
    if names is None:
        raise UserError(f"--group-by-name: no metric has the uid {metric!r}")
    try:
        return group_terms(names, wanted)
    except GroupFilterError as exc:
        raise UserError(f"--group-by-name {exc.name}: {exc.reason}") from None


async def values(args: argparse.Namespace) -> int:
    settings: Settings = settings_from(args)
    logs.setup(settings.log_level, settings.log_format == "json")
    wanted = group_filters(args.group_by_name, args.metric)
    where = ValueFilter(
        metric_uid=args.metric,
        customer_id=args.customer,
        time_unit=args.unit,
        group_key=args.group,
        since=parse_moment(args.since, "--from") if args.since else None,
        until=parse_moment(args.until, "--to") if args.until else None,
    )
    async with database(settings) as connection:
        where = dataclasses.replace(
            where, group=await _group_terms(connection, args.metric, wanted)
        )
        # The API's query; one row more than shown tells whether there are more.
        found = await page_values(connection, where, None, args.limit + 1)
        partial = await partial_ranges(connection, (v.metric_uid for v in found[: args.limit]))
        metrics = await list_metrics(connection)
    zones: dict[str, tzinfo] = {}
    for metric in metrics:
        # A zone this host's data lacks (stored from a newer host): shown in UTC.
        with contextlib.suppress(ValueError):
            zones[metric.uid] = zone(metric.timezone)
    more = len(found) > args.limit
    rows = [_value_row(value, zones.get(value.metric_uid, UTC)) for value in found[: args.limit]]
    columns: tuple[str, ...] = VALUE_COLUMNS
    if args.format == "table":
        unused = {c for c in KIND_COLUMNS if all(row[c] is None for row in rows)}
        columns = tuple(c for c in VALUE_COLUMNS if c not in unused)
    if partial:  # values that cover part of their range say so (docs/backfill.md)
        for row in rows:
            marker = partial.get(row["metric"])
            row["partial"] = None if marker is None else partial_text(marker)
        columns = (*columns, "partial")
    print(render(rows, columns, args.format), end="")
    if args.format == "table" and more:
        print(
            f"(first {args.limit} rows; narrow with --metric/--customer/--unit/--from/--to or raise --limit)"
        )
    return 0


def partial_text(marker: PartialRange) -> str:
    share = 100.0 * marker.records_done / marker.records_total if marker.records_total else 0.0
    how = "cancelled" if marker.reason == "backfill_cancelled" else "not finished"
    return (
        f"PARTIAL: backfill from {marker.backfill_from} {how} at {share:.1f}%"
        f" ({marker.records_done} of {marker.records_total} records)"
    )


def _value_row(value: MetricValue, zone: tzinfo) -> dict[str, Any]:
    """One rollup for people: periods in the metric's own zone."""
    return {
        "metric": value.metric_uid,
        "customer": value.customer_id,
        "group": value.group_key,
        "group_by_name": value.group,
        "unit": value.time_unit.value,
        "period_start": value.period_start.astimezone(zone).isoformat(),
        "period_end": value.period_end.astimezone(zone).isoformat(),
        "value": value.value,
        "text": value.value_text,
        "sum": value.sum,
        "latest_at": value.latest_at,
        "latest_id": value.latest_id,
        "events": value.event_count,
        "updated_at": value.updated_at.astimezone(UTC).isoformat(timespec="seconds"),
    }


def _cell(value: object) -> str:
    """A table or CSV cell: empty for none, a group by name as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def render(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    flat = [{c: _cell(row[c]) for c in columns} for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        return out.getvalue()
    cells = [columns, *[tuple(row[c] for c in columns) for row in flat]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


STATUS_COLUMNS = (
    "topic",
    "partition",
    "stored_offset",
    "end_offset",
    "lag",
    "owner",
    "last_flush",
    "records",
    "duplicates",
    "dead_letters",
)


async def end_offsets(
    bootstrap: str, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        await consumer.start()
        ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in partitions])
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}


async def status(args: argparse.Namespace) -> int:
    settings: Settings = settings_from(args)
    logs.setup(settings.log_level, settings.log_format == "json")
    async with database(settings) as connection:
        records = await connection.fetch(
            "SELECT * FROM tally.partition_offsets WHERE topic = ANY($1::text[]) ORDER BY topic, partition",
            list(settings.topic),
        )
    if not records:
        print(f"no partition of {', '.join(settings.topic)} has been assigned to a worker yet")
        return 0
    ends = await end_offsets(
        settings.kafka_bootstrap, [(r["topic"], r["partition"]) for r in records]
    )
    now = datetime.now(UTC)
    rows = []
    for r in records:
        end = ends.get((r["topic"], r["partition"]))
        stored = r["next_offset"]
        flushed = r["flushed_at"]
        rows.append(
            {
                "topic": r["topic"],
                "partition": r["partition"],
                "stored_offset": stored if stored >= 0 else "-",
                "end_offset": end if end is not None else "?",
                "lag": (end - max(stored, 0)) if end is not None else "?",
                "owner": r["owner"] or "-",
                "last_flush": f"{(now - flushed).total_seconds():.0f} s ago"
                if flushed
                else "never",
                "records": r["records_total"],
                "duplicates": r["duplicates_total"],
                "dead_letters": r["dead_letters_total"],
            }
        )
    print(render(rows, STATUS_COLUMNS, args.format), end="")
    return 0
