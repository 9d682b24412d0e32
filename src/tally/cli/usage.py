"""`tally usage`: the usage query of `GET /usage-metrics/{uid}/usage` from a
shell, as a table, JSON or CSV (docs/api.md, "Usage")."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from tally.cli.options import UserError, settings_from
from tally.cli.reports import group_filters, parse_moment, partial_text, render
from tally.config import Settings
from tally.core.numbers import decimal_text
from tally.core.periods import TimeUnit
from tally.core.windows import WindowRefused
from tally.store import usage as store
from tally.store.definitions import list_metrics
from tally.store.pool import connect
from tally.store.usage_partial import partial_span
from tally.telemetry import logs

COLUMNS = ("customer", "group", "window_start", "window_end", "value", "text", "events")
FIELDS = [
    "database_url",
    "log_format",
    "log_level",
    "max_future_skew",
    "max_lateness",
    "member_retention",
    "unique_window",
    "usage_max_rows",
]
WINDOW_SIZES = ["none", *(unit.value for unit in TimeUnit)]


def add(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    parser = command(
        sub, "usage", "usage of customers over a window, exactly (or refused)", run, FIELDS
    )
    parser.add_argument("metric", help="metric uid")
    parser.add_argument(
        "--customer", action="append", required=True, help="customer id (repeatable)"
    )
    parser.add_argument("--from", dest="since", required=True, metavar="WHEN", help="inclusive")
    parser.add_argument("--to", dest="until", required=True, metavar="WHEN", help="exclusive")
    parser.add_argument("--window-size", choices=WINDOW_SIZES, default="none")
    parser.add_argument("--window-time-zone", help="default: the metric's timezone")
    parser.add_argument(
        "--group-by", action="append", default=[], metavar="PROPERTY", help="repeatable"
    )
    parser.add_argument(
        "--group-by-name",
        dest="group_by_name",
        action="append",
        default=[],
        metavar="PROPERTY=TEXT",
        help="only groups whose grouping property has this text (repeatable)",
    )
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")


def _second(text: str, flag: str) -> int:
    moment = parse_moment(text, flag)
    if moment.microsecond != 0:  # not the float timestamp: it rounds far from 1970
        raise UserError(f"{flag}: must be a whole second")
    return int(moment.timestamp())


# The API's query parameters (WindowRefused.field) as this command's flags.
FLAGS = {
    "from": "--from",
    "to": "--to",
    "windowSize": "--window-size",
    "windowTimeZone": "--window-time-zone",
    "groupBy": "--group-by",
}


def flag_of(field: str) -> str:
    if field.startswith("group."):
        return "--group-by-name"
    return FLAGS.get(field, f"--{field}")


async def run(args: argparse.Namespace) -> int:
    settings: Settings = settings_from(args)
    logs.setup(settings.log_level, settings.log_format == "json")
    start, end = _second(args.since, "--from"), _second(args.until, "--to")
    wanted = group_filters(args.group_by_name, args.metric)
    connection = await connect(settings.database_url)
    try:
        found = [m for m in await list_metrics(connection) if m.uid == args.metric]
        if not found or found[0].is_deleted:
            raise UserError(f"no usage metric has the uid {args.metric!r}")
        metric = found[0]
        query = store.Query(
            customers=tuple(dict.fromkeys(args.customer)),
            start=start,
            end=end,
            size=None if args.window_size == "none" else TimeUnit(args.window_size),
            window_zone=args.window_time_zone or metric.timezone,
            group_by=tuple(args.group_by),
            group_filters=tuple(wanted.items()),
        )
        limits = store.MemberLimits(
            settings.member_retention, settings.unique_window, settings.usage_max_rows
        )
        try:
            # The marker before the values (tally.store.usage_partial, "read first").
            span = await partial_span(
                connection, metric.uid, settings.max_lateness, settings.max_future_skew
            )
            items = await store.run_query(connection, metric, query, limits, time.time())
        except WindowRefused as exc:
            raise UserError(f"{flag_of(exc.field)}: {exc.reason}") from None
        except (ValueError, OverflowError):
            raise UserError(
                "--from: the window's periods fall outside the years 1 to 9999"
            ) from None
    finally:
        await connection.close()
    rows = [
        {
            "customer": item.customer_id,
            "group": item.group,
            "window_start": datetime.fromtimestamp(item.start, UTC).isoformat(),
            "window_end": datetime.fromtimestamp(item.end, UTC).isoformat(),
            "value": None if item.value is None else decimal_text(item.value),
            "text": item.value_text,
            "events": item.event_count,
        }
        for item in items
    ]
    columns: Sequence[str] = COLUMNS
    if args.format == "table" and all(row["text"] is None for row in rows):
        columns = tuple(c for c in COLUMNS if c != "text")
    if span is not None and any(span.overlaps(i.start, i.end) for i in items):
        # Windows that may count part of the events say so, as `tally values` does.
        for row, item in zip(rows, items, strict=True):
            row["partial"] = (
                partial_text(span.marker) if span.overlaps(item.start, item.end) else None
            )
        columns = (*columns, "partial")
    print(render(rows, tuple(columns), args.format), end="")
    return 0
