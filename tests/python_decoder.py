"""The event decoder as it was in Python before the native core (d73c542 and
issue 10's fixes), kept only as a second opinion for tests.

tests/unit/test_native_decode.py compares the native decoder's reasons with
this one's over fuzzed input; the intentional differences are listed there.
Not used by Tally itself.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

LOSSY_NUMBER = re.compile(rb"[0-9][0-9.]{15}|[eE]-[0-9]{3}")


def contains_nul(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


MAX_TEXT_LENGTH = 256
# Deepest nesting of an event document (the top-level object is level 1,
# `properties` level 2). Every walk and re-parse of a document stays far
# from Python's recursion limit, and no usage event needs more.
MAX_DEPTH = 32
# Event times Tally can put in periods, whatever the acceptance window says:
# zones are well-behaved from 1900 on (core/periods.py), and a year period of
# 9999 (local) would end past what datetime holds.
EARLIEST_EVENT = -2208988800.0  # 1900-01-01T00:00:00Z
LATEST_EVENT = 253339228800.0  # 9998-01-01T00:00:00Z


class RejectReason(enum.StrEnum):
    """Why an event went to the dead-letter topic."""

    EMPTY = "empty"
    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LATE = "too_late"
    TOO_FAR_IN_FUTURE = "too_far_in_future"
    TOO_DEEP = "too_deep"
    INTERNAL_ERROR = "internal_error"  # a bug in Tally, caught per record


class Rejection:
    __slots__ = ("detail", "reason")

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"Rejection({self.reason.value!r}, {self.detail!r})"


class UsageEvent:
    """A decoded usage event; `timestamp` is POSIX seconds."""

    __slots__ = ("customer_id", "event_type", "exact", "id", "properties", "raw", "timestamp")

    def __init__(
        self,
        id: str,
        event_type: str,
        customer_id: str,
        timestamp: float,
        properties: dict[str, Any],
        raw: bytes = b"",
        exact: bool = True,
    ) -> None:
        self.id = id
        self.event_type = event_type
        self.customer_id = customer_id
        self.timestamp = timestamp
        self.properties = properties
        self.raw = raw
        # False while numbers are floats from orjson that may hide digits.
        self.exact = exact

    def exact_properties(self) -> dict[str, Any]:
        """Properties with every number exact, re-parsing only when it matters.

        Called by the core before it reads a float; cheap when the raw bytes
        hold no literal long enough to lose digits in a double.
        """
        if not self.exact:
            # decode_event bounded the depth, so this parse cannot recurse too far.
            if LOSSY_NUMBER.search(self.raw) is not None:
                document = _exact_loads(self.raw)
                properties = document.get("properties")
                if properties is None:
                    properties = document.get("eventProperties")
                if isinstance(properties, dict):
                    self.properties = properties
            self.exact = True  # only once the exact numbers are in place
        return self.properties

    def __repr__(self) -> str:
        return (
            f"UsageEvent(id={self.id!r}, event_type={self.event_type!r}, "
            f"customer_id={self.customer_id!r}, timestamp={self.timestamp!r}, "
            f"properties={self.properties!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    """Acceptance window and size limit; defaults are docs/design.md §2.1's."""

    max_bytes: int = 64 * 1024
    max_lateness_seconds: float = 35 * 86400.0
    max_future_seconds: float = 300.0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _exact_loads(raw: bytes) -> Any:
    """The standard library parser with decimals for every non-integer number."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)


def _parse(raw: bytes) -> tuple[Any, bool] | Rejection:
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        pass
    # orjson refuses valid JSON it cannot hold in a double (e.g. 1e400), and
    # nesting past 1024 levels; the exact parser takes the first, and rejects
    # what is not JSON after all.
    try:
        document = _exact_loads(raw)
    except RecursionError:
        return _TOO_DEEP
    except ValueError:
        return _NOT_JSON
    if _too_deep(document):
        return _TOO_DEEP
    if not _utf8_text(document):  # "\ud800" parses, but is not UTF-8 text
        return _NOT_JSON
    return document, True


_NOT_JSON = Rejection(RejectReason.NOT_JSON, "the value is not UTF-8 JSON")
_TOO_DEEP = Rejection(RejectReason.TOO_DEEP, f"nested more than {MAX_DEPTH} levels deep")


def _too_deep(document: Any) -> bool:
    """Whether containers nest more than MAX_DEPTH levels (iteratively)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is dict:
            children = value.values()
        elif kind is list:
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


def _utf8_text(document: Any) -> bool:
    """Whether every string in a parsed document is valid Unicode text.

    Not `orjson.dumps`: it also refuses integers over 64 bits, which JSON
    allows and the exact parser holds."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


_DIGITS = frozenset("0123456789")
_LEAP_SECOND_FRACTION = ".999999"


def parse_timestamp(text: str) -> float | None:
    """POSIX seconds from an RFC 3339 date-time with an offset, else None.

    A leap second (`23:59:60Z`: second 60 of a minute that ends a UTC minute
    59) is read as the last microsecond of its minute: POSIX time has no leap
    seconds, and the event stays in the period (and the order) the leap second
    belongs to."""
    # Shape first, every index checked against the length: fromisoformat alone
    # also takes week dates, ordinal dates, basic format and naive times, none
    # of which RFC 3339 allows.
    n = len(text)
    if (
        n < 20
        or n > 40
        or not text.isascii()
        or text[4] != "-"
        or text[7] != "-"
        or text[10] not in "Tt "
        or text[13] != ":"
        or text[16] != ":"
    ):
        return None
    last = text[-1]
    if last not in "Zz" and not (text[-6] in "+-" and text[-3] == ":"):
        return None
    if last == "z" or text[10] == "t":
        text = text.upper()  # RFC 3339 allows lower case; fromisoformat does not
    after_seconds = text[19]
    if after_seconds == ".":
        # At least one digit, then the offset ("Z" or "+hh:mm").
        if n < 22 or text[20] not in _DIGITS:
            return None
    elif after_seconds not in "Z+-":
        return None
    if text[17:19] == "60":
        # A leap second ends a UTC minute: 23:59:60Z is 05:29:60+05:30.
        zone_minutes = 0 if text[-1] == "Z" else int(text[-6] + text[-2:])
        if not text[14:16].isdigit() or (int(text[14:16]) - zone_minutes) % 60 != 59:
            return None
        end = 19 if after_seconds != "." else 20 + _fraction_length(text, 20)
        text = text[:17] + "59" + _LEAP_SECOND_FRACTION + text[end:]
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:  # pragma: no cover - the shape check requires an offset
            return None
        return moment.timestamp()
    except (ValueError, OverflowError):  # also years 1 and 9999 shifted out of range by the offset
        return None


def _fraction_length(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    return end - start


def _text_field(document: dict[str, Any], name: str, alias: str | None) -> str | Rejection:
    value = document.get(name)
    if alias is not None:
        aliased = document.get(alias)
        if value is None:
            value, name = aliased, (alias if aliased is not None else name)
        elif aliased is not None and aliased != value:
            return Rejection(RejectReason.INVALID_FIELD, f"{name} and its alias {alias} differ")
    if value is None:
        return Rejection(RejectReason.MISSING_FIELD, f"{name} is missing")
    if type(value) is not str:
        return Rejection(RejectReason.INVALID_FIELD, f"{name} must be a string")
    if not 0 < len(value) <= MAX_TEXT_LENGTH:
        return Rejection(
            RejectReason.INVALID_FIELD, f"{name} must be 1 to {MAX_TEXT_LENGTH} characters"
        )
    return value


def decode_event(raw: bytes | None, now: float, limits: DecodeLimits) -> UsageEvent | Rejection:
    """Decode one message value; `now` is the worker's clock in POSIX seconds."""
    if not raw:
        return Rejection(RejectReason.EMPTY, "the message has no value")
    if len(raw) > limits.max_bytes:
        return Rejection(
            RejectReason.OVERSIZED, f"{len(raw)} bytes, the limit is {limits.max_bytes}"
        )
    parsed = _parse(raw)
    if type(parsed) is Rejection:
        return parsed
    document, exact = parsed  # type: ignore[misc]
    if type(document) is not dict:
        return Rejection(RejectReason.NOT_AN_OBJECT, "the value is not a JSON object")
    # Counting brackets is far cheaper than walking; only a document with more
    # brackets than the limit (in strings too) can be too deep.
    if not exact and raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(document):
        return _TOO_DEEP
    # memchr for a backslash first: most events have none. The bytes only
    # suggest a NUL (the JSON text "C:\\u0000" has none); the parsed strings decide.
    if b"\\" in raw and b"\\u0000" in raw and contains_nul(document):
        # PostgreSQL text cannot hold NUL; better refused here than a flush that never succeeds.
        return Rejection(RejectReason.INVALID_FIELD, "contains a NUL character (\\u0000)")

    # The common shape first (canonical names, valid strings, no aliases);
    # anything else takes _text_field's careful path.
    event_id = document.get("id")
    if (
        type(event_id) is not str
        or not 0 < len(event_id) <= MAX_TEXT_LENGTH
        or "customerEventId" in document
    ):
        event_id = _text_field(document, "id", "customerEventId")
        if type(event_id) is Rejection:
            return event_id
    event_type = document.get("eventType")
    if type(event_type) is not str or not 0 < len(event_type) <= MAX_TEXT_LENGTH:
        event_type = _text_field(document, "eventType", None)
        if type(event_type) is Rejection:
            return event_type
    customer_id = document.get("customerId")
    if (
        type(customer_id) is not str
        or not 0 < len(customer_id) <= MAX_TEXT_LENGTH
        or "customerAlias" in document
    ):
        customer_id = _text_field(document, "customerId", "customerAlias")
        if type(customer_id) is Rejection:
            return customer_id
    stamp = document.get("timestamp")
    if type(stamp) is not str or "eventTimestamp" in document:
        stamp = _text_field(document, "timestamp", "eventTimestamp")
        if type(stamp) is Rejection:
            if stamp.reason is RejectReason.INVALID_FIELD:
                return Rejection(RejectReason.BAD_TIMESTAMP, stamp.detail)
            return stamp
    timestamp = parse_timestamp(stamp)  # type: ignore[arg-type]
    if timestamp is None:
        return Rejection(
            RejectReason.BAD_TIMESTAMP, "timestamp must be an RFC 3339 date-time with an offset"
        )
    if not EARLIEST_EVENT <= timestamp < LATEST_EVENT:
        return Rejection(
            RejectReason.BAD_TIMESTAMP, "timestamp must fall between the years 1900 and 9997 (UTC)"
        )
    if timestamp < now - limits.max_lateness_seconds:
        return Rejection(
            RejectReason.TOO_LATE,
            f"timestamp is more than {limits.max_lateness_seconds:g} s in the past",
        )
    if timestamp > now + limits.max_future_seconds:
        return Rejection(
            RejectReason.TOO_FAR_IN_FUTURE,
            f"timestamp is more than {limits.max_future_seconds:g} s in the future",
        )

    properties = document.get("properties")
    if properties is None:
        properties = document.get("eventProperties")
        if properties is None:
            properties = {}
    elif document.get("eventProperties", properties) not in (None, properties):
        return Rejection(
            RejectReason.INVALID_FIELD, "properties and its alias eventProperties differ"
        )
    if type(properties) is not dict:
        return Rejection(RejectReason.INVALID_FIELD, "properties must be an object")
    # Values may nest (objects, arrays): the depth limit above bounds them.

    return UsageEvent(
        event_id,  # type: ignore[arg-type]
        event_type,  # type: ignore[arg-type]
        customer_id,  # type: ignore[arg-type]
        timestamp,
        properties,
        raw,
        exact,
    )
