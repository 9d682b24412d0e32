"""A deliberately simple reference for metering semantics (DESIGN 1.2).

Written from the design text, one event at a time, sharing no code with
`tally.core`: if the core and this disagree, one of them misreads the design.
Periods are named by their truncated local wall-clock value (a naive
datetime), not by instants, so the core's period starts are compared by
truncating them the same way.

Used by the core's property tests and by the worker's end-to-end exactness
tests, which rebuild the values table from the raw events they sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, Rounded
from typing import Any
from zoneinfo import ZoneInfo

_EXACT = Context(prec=500, traps=[Inexact, Rounded])
RefKey = tuple[str, str, str, str, datetime]  # uid, customer, group, unit, local period start


def truncate(local: datetime, unit: str) -> datetime:
    """Local wall time truncated to the start of its calendar unit (naive)."""
    local = local.replace(tzinfo=None, fold=0)
    if unit == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    if unit == "quarter":
        return day.replace(day=1, month=(day.month - 1) // 3 * 3 + 1)
    if unit == "year":
        return day.replace(day=1, month=1)
    raise ValueError(unit)


def local_period(timestamp: float, unit: str, zone: str) -> datetime:
    return truncate(datetime.fromtimestamp(timestamp, ZoneInfo(zone)), unit)


def exact_number(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def plain_decimal(number: Decimal) -> str:
    """Positional text of a decimal, built digit by digit (no context, so a
    literal of any length is written exactly): no exponent, no trailing zeros."""
    if number == 0:
        return "0"
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(str(d) for d in digits).lstrip("0")
    if exponent >= 0:
        whole, fraction = text + "0" * exponent, ""
    elif -exponent >= len(text):
        whole, fraction = "0", "0" * (-exponent - len(text)) + text
    else:
        whole, fraction = text[:exponent], text[exponent:]
    fraction = fraction.rstrip("0")
    return ("-" if sign else "") + whole + ("." + fraction if fraction else "")


def text_form(value: Any, case_sensitive: bool) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if case_sensitive else value.casefold()
    return plain_decimal(exact_number(value))


# A group value or UNIQUE member whose text is longer than this, in UTF-8
# bytes, does not count for the metric (docs/decisions.md).
MAX_KEY_BYTES = 512


def too_long(value: Any, text: str) -> bool:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        number = exact_number(value)
        # Such a number's text has more digits than the limit (and would not fit _EXACT).
        if number != 0 and abs(number.adjusted()) > 2 * MAX_KEY_BYTES:
            return True
    return len(text.encode("utf-8")) > MAX_KEY_BYTES


def key_form(value: Any, case_sensitive: bool) -> str | bool | None:
    """text_form for group values and members; False when too long to count."""
    if isinstance(value, Decimal) and value != 0 and abs(value.adjusted()) > 2 * MAX_KEY_BYTES:
        return False
    text = text_form(value, case_sensitive)
    if text is not None and too_long(value, text):
        return False
    return text


def same_value(event_value: Any, listed: Any, case_sensitive: bool) -> bool:
    if isinstance(event_value, bool) or isinstance(listed, bool):
        return type(event_value) is bool and type(listed) is bool and event_value == listed
    if isinstance(event_value, str) or isinstance(listed, str):
        if not (isinstance(event_value, str) and isinstance(listed, str)):
            return False
        if case_sensitive:
            return event_value == listed
        return event_value.casefold() == listed.casefold()
    if event_value is None or listed is None:
        return False
    return exact_number(event_value) == exact_number(listed)


def matches(definition: Mapping[str, Any], properties: Mapping[str, Any]) -> bool:
    case_sensitive = definition.get("caseSensitive", True)
    negated = set(definition.get("propertiesToNegate", []))
    for name, values in definition.get("propertyFilters", {}).items():
        value = properties.get(name)
        equal = any(same_value(value, listed, case_sensitive) for listed in values)
        if name in negated and equal:
            return False
        if name not in negated and not equal:
            return False
    return True


def sum_amount(value: Any) -> Decimal | None:
    """The amount a SUM takes from a value, or None when it does not count."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value
        # A plain decimal literal only: no NaN, Infinity, blanks, underscores,
        # or the non-ASCII digits Decimal() would quietly accept.
        if not text or len(text) > 100 or not set(text) <= set("0123456789+-.eE"):
            return None
        try:
            number = Decimal(text)
        except ArithmeticError:
            return None
    else:
        number = exact_number(value)
    if not number.is_finite():
        return None
    if number == 0:
        return Decimal(0)  # 0e-300 is zero, and adds no decimals
    # Bounds of docs/decisions.md, on the value as written without trailing
    # zeros: below 10**31, and at most 30 decimals.
    text = plain_decimal(number)
    whole, _, fraction = text.lstrip("-").partition(".")
    if len(whole.lstrip("0")) > 31 or len(fraction) > 30:
        return None
    return Decimal(text)


@dataclass
class Rollup:
    events: int = 0
    total: Decimal = Decimal(0)
    members: set[str] = field(default_factory=set)


@dataclass
class Reference:
    """Final rollups of a set of metric definitions over a stream of events."""

    definitions: list[Mapping[str, Any]]
    rollups: dict[RefKey, Rollup] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    duplicates: int = 0

    def add(self, event: Mapping[str, Any], timestamp: float, dedup: bool = False) -> None:
        if dedup:
            if event["id"] in self.seen_ids:
                self.duplicates += 1
                return
            self.seen_ids.add(event["id"])
        properties = event.get("properties") or {}
        for definition in self.definitions:
            if definition.get("deletedAt"):
                continue
            if definition["eventType"] != event["eventType"] or not matches(definition, properties):
                continue
            kind = definition["aggregationType"]
            case_sensitive = definition.get("caseSensitive", True)
            amount = Decimal(0)
            member = None
            if kind == "SUM":
                found = sum_amount(properties.get(definition["aggregationProperty"]))
                if found is None:
                    continue
                amount = found
            elif kind == "UNIQUE":
                member = key_form(properties.get(definition["aggregationProperty"]), case_sensitive)
                if member is None or member is False:
                    continue
            group = ""
            if definition.get("metricType") == "GROUPED":
                grouping = key_form(properties.get(definition["groupingProperty"]), case_sensitive)
                if grouping is False:
                    continue
                group = grouping or ""
            zone = definition.get("timezone", "UTC")
            for unit in definition.get("timeUnits", ["day", "month"]):
                key = (
                    definition["uid"],
                    event["customerId"],
                    group,
                    unit,
                    local_period(timestamp, unit, zone),
                )
                rollup = self.rollups.setdefault(key, Rollup())
                rollup.events += 1
                if kind == "SUM":
                    rollup.total = _EXACT.add(rollup.total, amount)
                elif kind == "UNIQUE":
                    assert member is not None
                    rollup.members.add(member)

    def values(self) -> dict[RefKey, tuple[Decimal, int]]:
        kinds = {d["uid"]: d["aggregationType"] for d in self.definitions}
        result = {}
        for key, rollup in self.rollups.items():
            kind = kinds[key[0]]
            if kind == "COUNT":
                value = Decimal(rollup.events)
            elif kind == "SUM":
                value = rollup.total
            else:
                value = Decimal(len(rollup.members))
            result[key] = (value, rollup.events)
        return result


def parse_exact(raw: bytes) -> dict[str, Any]:
    """An event document with every non-integer number as an exact Decimal."""
    document: dict[str, Any] = json.loads(raw, parse_float=Decimal)
    for alias, name in (
        ("customerEventId", "id"),
        ("customerAlias", "customerId"),
        ("eventTimestamp", "timestamp"),
        ("eventProperties", "properties"),
    ):
        if document.get(name) is None and alias in document:
            document[name] = document[alias]
    return document


def event_seconds(document: Mapping[str, Any]) -> float:
    text = str(document["timestamp"]).upper()
    # RFC 3339 leap second: docs/decisions.md reads second 60 of a minute that
    # ends a UTC minute 59 as the last microsecond of that minute.
    leap = re.fullmatch(r"(.{17})60(?:\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})", text)
    if leap:
        head, zone = leap.groups()
        moment = datetime.fromisoformat(f"{head}59.999999{zone}")
        assert moment.astimezone(UTC).minute == 59, text
        return moment.timestamp()
    return datetime.fromisoformat(text).timestamp()


def reference_values(
    definitions: list[Mapping[str, Any]], raw_events: Iterable[bytes], dedup: bool = False
) -> dict[RefKey, tuple[Decimal, int]]:
    reference = Reference(definitions)
    for raw in raw_events:
        document = parse_exact(raw)
        reference.add(document, event_seconds(document), dedup=dedup)
    return reference.values()
