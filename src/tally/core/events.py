"""Usage events: the reasons one is refused, the acceptance limits, and a
decoder for tools.

The worker decodes whole batches in the native core (`tally._native`,
native/src/event.rs states the rules); this module gives the same decoder one
value at a time, for the API, `tally explain` and tests, with the reasons as a
Python enum. The pydantic model in `tally.contracts.event` states the same
contract for schemas and tools; a test keeps them in agreement.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from tally import _native

MAX_TEXT_LENGTH = 256
MAX_DEPTH: int = _native.MAX_DEPTH

parse_timestamp = _native.parse_timestamp
"""POSIX seconds from an RFC 3339 date-time with an offset, else None."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    """Acceptance window and size limit; the defaults are the contract's."""

    max_bytes: int = 64 * 1024
    max_lateness_seconds: float = 35 * 86400.0
    max_future_seconds: float = 300.0

    def native(self) -> _native.Limits:
        return _native.Limits(
            max_bytes=self.max_bytes,
            max_lateness_seconds=self.max_lateness_seconds,
            max_future_seconds=self.max_future_seconds,
            late_detail=f"timestamp is more than {self.max_lateness_seconds:g} s in the past",
            future_detail=f"timestamp is more than {self.max_future_seconds:g} s in the future",
        )


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """A decoded usage event; `timestamp` is POSIX seconds, numbers are exact."""

    id: str
    event_type: str
    customer_id: str
    timestamp: float
    properties: dict[str, Any]


_CORE = _native.Core(lambda unit, zone, second: (second, second + 1))  # decoding only


def decode_event(raw: bytes | None, now: float, limits: DecodeLimits) -> UsageEvent | Rejection:
    """Decode one message value exactly as a worker does; `now` is POSIX seconds."""
    result = _CORE.decode_one(raw, now, limits.native())
    if isinstance(result, tuple):
        reason, detail = result
        return Rejection(RejectReason(reason), detail)
    return UsageEvent(
        result["id"],
        result["eventType"],
        result["customerId"],
        result["timestamp"],
        result["properties"],  # numbers as exact Decimals
    )
