"""A deliberately simple reference for metering semantics (docs/design.md §2.2).

Written from the design text, one event at a time, sharing no code with
`tally.core`: if the core and this disagree, one of them misreads the design.
Periods are named by their truncated local wall-clock value (a naive
datetime), not by instants, so the core's period starts are compared by
truncating them the same way.

Covers every kind of docs/metering-model.md (COUNT, SUM, UNIQUE, MAX, MIN,
AVG, LATEST of numbers and STRING), paths, several grouping keys and presence
filters, with its own path walker. `reference_rows` gives every column of a
rollup (`Row`); `reference_values` just (value, event_count).

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
from fractions import Fraction
from typing import Any, NamedTuple
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


def path_segments(text: str) -> tuple[str | int, ...]:
    """The segments of a property name (docs/metering-model.md, "Paths"):
    a text not starting with `$.` or `$[` is one key; else `.name`, `['key']` (escapes
    \\' and \\\\ only) and `[N]` segments. Definitions reaching here were
    validated, so anything else is a bug in this reference."""
    if not text.startswith(("$.", "$[")):
        return (text,)
    segments: list[str | int] = []
    i = 1
    while i < len(text):
        if text[i] == ".":
            name = re.match(r"[A-Za-z_][A-Za-z0-9_-]*", text[i + 1 :])
            assert name, text
            segments.append(name.group())
            i += 1 + name.end()
        elif text.startswith("['", i):
            i += 2
            key = ""
            while text[i] != "'":
                if text[i] == "\\":
                    i += 1
                key += text[i]
                i += 1
            assert text[i + 1] == "]", text
            segments.append(key)
            i += 2
        else:
            index = re.match(r"\[(0|[1-9][0-9]*)\]", text[i:])
            assert index, text
            segments.append(int(index.group(1)))
            i += index.end()
    assert segments, text
    return tuple(segments)


def lookup(properties: Any, name: str) -> Any:
    """What a property name or path finds: a scalar, or None (nothing found).
    Objects and arrays at the end find nothing; so does a wrong type, a
    missing key or index, or a null on the way."""
    value = properties
    for segment in path_segments(name):
        if isinstance(segment, str):
            if not isinstance(value, dict):
                return None
            value = value.get(segment)
        else:
            if not isinstance(value, list) or segment >= len(value):
                return None
            value = value[segment]
        if value is None:
            return None
    if isinstance(value, dict | list):
        return None
    return value


def matches(definition: Mapping[str, Any], properties: Mapping[str, Any]) -> bool:
    case_sensitive = definition.get("caseSensitive", True)
    negated = set(definition.get("propertiesToNegate", []))
    for name, present in definition.get("presenceFilters", {}).items():
        if (lookup(properties, name) is not None) != present:
            return False
    for name, values in definition.get("propertyFilters", {}).items():
        value = lookup(properties, name)
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


def average(total: Decimal, events: int) -> Decimal:
    """total / events to 12 decimals, a half away from zero, trailing zeros
    trimmed; worked out on the exact fraction, so no rounding on the way."""
    exact = Fraction(total) / events
    scaled = abs(exact) * 10**12
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest >= scaled.denominator:
        whole += 1
    rounded = Decimal(whole if exact >= 0 else -whole).scaleb(-12, _EXACT)
    return Decimal(plain_decimal(rounded))


def group_key(definition: Mapping[str, Any], properties: Any) -> str | None:
    """The rollup's group_key, or None when the event is skipped (too long)."""
    if definition.get("metricType") != "GROUPED":
        return ""
    case_sensitive = definition.get("caseSensitive", True)
    names = definition.get("groupingProperties")
    if names is None:
        one = key_form(lookup(properties, definition["groupingProperty"]), case_sensitive)
        if one is False:
            return None
        return one or ""
    texts = [key_form(lookup(properties, name), case_sensitive) for name in names]
    if any(text is False for text in texts):
        return None
    if len(names) == 1:
        return texts[0] or ""
    encoded = json.dumps(texts, ensure_ascii=False, separators=(",", ":"))
    if len(encoded.encode("utf-8")) > MAX_KEY_BYTES:
        return None
    return encoded


class Row(NamedTuple):
    """One rollup as tally.metric_values holds it (beyond its key).

    Numbers are Decimals (2.5 equals 2.50); `value` is None for a STRING
    LATEST, whose text is `value_text`; `value_sum` is AVG's exact sum;
    `latest_at` (POSIX microseconds) and `latest_id` are LATEST's winner."""

    value: Decimal | None
    events: int
    value_text: str | None = None
    value_sum: Decimal | None = None
    latest_at: int | None = None
    latest_id: str | None = None


@dataclass
class Rollup:
    events: int = 0
    total: Decimal = Decimal(0)
    members: set[str] = field(default_factory=set)
    extreme: Decimal | None = None
    # LATEST's winner: (timestamp micros, id, value).
    latest: tuple[int, str, Decimal | str] | None = None


NUMBER_KINDS = ("SUM", "MAX", "MIN", "AVG")


@dataclass
class Reference:
    """Final rollups of a set of metric definitions over a stream of events."""

    definitions: list[Mapping[str, Any]]
    rollups: dict[RefKey, Rollup] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    duplicates: int = 0

    def add(
        self,
        event: Mapping[str, Any],
        timestamp: float,
        dedup: bool = False,
        micros: int | None = None,
    ) -> None:
        if dedup:
            if event["id"] in self.seen_ids:
                self.duplicates += 1
                return
            self.seen_ids.add(event["id"])
        if micros is None:
            micros = round(timestamp * 1_000_000)
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
            if kind in NUMBER_KINDS or (
                kind == "LATEST" and definition.get("valueType", "NUMBER") == "NUMBER"
            ):
                found = sum_amount(lookup(properties, definition["aggregationProperty"]))
                if found is None:
                    continue
                amount = found
            elif kind in ("UNIQUE", "LATEST"):  # a member, or a STRING LATEST's text
                member = key_form(
                    lookup(properties, definition["aggregationProperty"]), case_sensitive
                )
                if member is None or member is False:
                    continue
            group = group_key(definition, properties)
            if group is None:
                continue
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
                if kind in ("SUM", "AVG"):
                    rollup.total = _EXACT.add(rollup.total, amount)
                elif kind == "UNIQUE":
                    assert isinstance(member, str)
                    rollup.members.add(member)
                elif kind == "MAX":
                    if rollup.extreme is None or amount > rollup.extreme:
                        rollup.extreme = amount
                elif kind == "MIN":
                    if rollup.extreme is None or amount < rollup.extreme:
                        rollup.extreme = amount
                elif kind == "LATEST" and (
                    # The greatest (timestamp, id) wins, ids by code point.
                    rollup.latest is None or (micros, event["id"]) > rollup.latest[:2]
                ):
                    value = member if isinstance(member, str) else amount
                    rollup.latest = (micros, event["id"], value)

    def rows(self) -> dict[RefKey, Row]:
        kinds = {d["uid"]: d["aggregationType"] for d in self.definitions}
        result = {}
        for key, rollup in self.rollups.items():
            kind = kinds[key[0]]
            if kind == "COUNT":
                row = Row(Decimal(rollup.events), rollup.events)
            elif kind == "SUM":
                row = Row(rollup.total, rollup.events)
            elif kind == "UNIQUE":
                row = Row(Decimal(len(rollup.members)), rollup.events)
            elif kind in ("MAX", "MIN"):
                row = Row(rollup.extreme, rollup.events)
            elif kind == "AVG":
                row = Row(
                    average(rollup.total, rollup.events), rollup.events, value_sum=rollup.total
                )
            else:
                assert kind == "LATEST"
                assert rollup.latest is not None
                micros, winner, value = rollup.latest
                text = value if isinstance(value, str) else None
                number = value if isinstance(value, Decimal) else None
                row = Row(number, rollup.events, text, None, micros, winner)
            result[key] = row
        return result

    def values(self) -> dict[RefKey, tuple[Decimal | None, int]]:
        """(value, event_count) of each rollup: what older callers compare."""
        return {key: (row.value, row.events) for key, row in self.rows().items()}


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


def event_micros(document: Mapping[str, Any]) -> int:
    """POSIX microseconds of the event's time, exactly: digits past the
    microsecond are cut, a leap second is the last microsecond of its minute."""
    text = str(document["timestamp"]).upper()
    cut = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)
    leap = re.fullmatch(r"(.{17})60(?:\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})", cut)
    if leap:
        head, zone = leap.groups()
        cut = f"{head}59.999999{zone}"
    moment = datetime.fromisoformat(cut)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def reference_rows(
    definitions: list[Mapping[str, Any]], raw_events: Iterable[bytes], dedup: bool = False
) -> dict[RefKey, Row]:
    """Every rollup with all its columns (`Row`), one event at a time."""
    reference = Reference(definitions)
    for raw in raw_events:
        document = parse_exact(raw)
        reference.add(document, event_seconds(document), dedup=dedup, micros=event_micros(document))
    return reference.rows()


def reference_values(
    definitions: list[Mapping[str, Any]], raw_events: Iterable[bytes], dedup: bool = False
) -> dict[RefKey, tuple[Decimal | None, int]]:
    """(value, event_count) of every rollup (`reference_rows` has every column)."""
    rows = reference_rows(definitions, raw_events, dedup)
    return {key: (row.value, row.events) for key, row in rows.items()}
