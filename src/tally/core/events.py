"""Decoding one Kafka message value into a usage event, or saying why not.

This runs once per event, so it builds no pydantic model: orjson parses, a few
type and length checks follow, and the result is a slotted `UsageEvent` or a
`Rejection` whose reason is a dead-letter label (DESIGN section 4). The
pydantic model in `tally.contracts.event` states the same contract for
schemas and tools; a test keeps the two in agreement.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from tally.core.values import LOSSY_NUMBER, contains_nul

MAX_TEXT_LENGTH = 256


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
            self.exact = True
            if LOSSY_NUMBER.search(self.raw) is not None:
                document = _exact_loads(self.raw)
                properties = document.get("properties")
                if properties is None:
                    properties = document.get("eventProperties")
                if isinstance(properties, dict):
                    self.properties = properties
        return self.properties

    def __repr__(self) -> str:
        return (
            f"UsageEvent(id={self.id!r}, event_type={self.event_type!r}, "
            f"customer_id={self.customer_id!r}, timestamp={self.timestamp!r}, "
            f"properties={self.properties!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    """Acceptance window and size limit; defaults are DESIGN 1.1's."""

    max_bytes: int = 64 * 1024
    max_lateness_seconds: float = 35 * 86400.0
    max_future_seconds: float = 300.0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _exact_loads(raw: bytes) -> Any:
    """The standard library parser with decimals for every non-integer number."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)


def _parse(raw: bytes) -> tuple[Any, bool] | None:
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        pass
    # orjson refuses valid JSON it cannot hold in a double (e.g. 1e400); the
    # exact parser takes it, and rejects what is not JSON after all.
    try:
        document = _exact_loads(raw)
        if not _utf8_text(document):  # "\ud800" parses, but is not UTF-8 text
            return None
    except (ValueError, RecursionError):
        return None
    return document, True


def _utf8_text(value: Any) -> bool:
    """Whether every string in a parsed document is valid Unicode text.

    Not `orjson.dumps`: it also refuses integers over 64 bits, which JSON
    allows and the exact parser holds."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_utf8_text(k) and _utf8_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_utf8_text(v) for v in value)
    return True


def parse_timestamp(text: str) -> float | None:
    """POSIX seconds from an RFC 3339 date-time with an offset, else None."""
    # Shape first: datetime.fromisoformat alone also takes week dates, ordinal
    # dates, basic format and naive times, none of which RFC 3339 allows.
    n = len(text)
    if (
        n < 20
        or n > 40
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
    if (n > 20 and text[19] not in ".Zz+-") or (text[19] == "." and not text[20].isdigit()):
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:  # pragma: no cover - the shape check requires an offset
            return None
        return moment.timestamp()
    except (ValueError, OverflowError):  # also years 1 and 9999 shifted out of range by the offset
        return None


_SCALAR_TYPES = frozenset((str, int, float, bool, Decimal, type(None)))


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
    if parsed is None:
        return Rejection(RejectReason.NOT_JSON, "the value is not UTF-8 JSON")
    document, exact = parsed
    if type(document) is not dict:
        return Rejection(RejectReason.NOT_AN_OBJECT, "the value is not a JSON object")
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
    for key, value in properties.items():
        if type(value) not in _SCALAR_TYPES:
            return Rejection(
                RejectReason.INVALID_FIELD,
                f"properties.{key[:64]} must be a string, number, boolean or null",
            )

    return UsageEvent(
        event_id,  # type: ignore[arg-type]
        event_type,  # type: ignore[arg-type]
        customer_id,  # type: ignore[arg-type]
        timestamp,
        properties,
        raw,
        exact,
    )
